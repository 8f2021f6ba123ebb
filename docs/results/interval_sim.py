#!/usr/bin/env python3
"""Coverage of several-seed intervals on the crossed seeds x prompts model, by simulation with
analytic (not bootstrap) variance parts (docs/RESULTS.md, "Checks"): A = one t at
Welch-Satterthwaite degrees of freedom (warp before issue 27), D = the seeds part at t(K-1) and
the shared prompts part at z in quadrature (warp now), E, E2 = variants rejected.
Needs numpy and scipy.   python3 docs/results/interval_sim.py 3000
"""
import numpy as np, sys
from scipy import stats as st
rng=np.random.default_rng(7)
def sim(K,sd_seed,sd_prompt,sd_noise,P=100,S=2,sims=2000):
    th=0.05; H={'A':[], 'D':[], 'E':[], 'E2':[]}
    for _ in range(sims):
        b=sd_prompt*rng.standard_normal(P)
        a=sd_seed*rng.standard_normal(K)
        e=sd_noise*rng.standard_normal((K,P,S)).mean(2)
        d=th+a[:,None]+b[None,:]+e
        T=d.mean(1); Tb=T.mean(); s2=T.var(ddof=1)
        vp=d.mean(0).var(ddof=1)/P
        w=np.mean([d[k].var(ddof=1)/P for k in range(K)])
        vn=max(0,(w-vp)/(K-1)); vs=max(0,s2/K-vn); V=vs+vp
        den=(s2/K)**2/(K-1)+vp**2/(P-1)
        df=V*V/den if den>0 else np.inf
        t=st.t.ppf(0.975,max(df,K-1))
        H['A'].append((abs(Tb-th), t*np.sqrt(V)))
        vb=max(0,vp-vn); V2=s2/K+vb
        df2=V2*V2/((s2/K)**2/(K-1)+vb**2/(P-1))
        t2=st.t.ppf(0.975,max(df2,K-1))
        tk=st.t.ppf(0.975,K-1); z=st.norm.ppf(0.975)
        H['D'].append((abs(Tb-th), np.sqrt(tk**2*s2/K+z**2*vb)))
        H['E'].append((abs(Tb-th), np.sqrt(tk**2*vs+z**2*vp)))
        tp=st.t.ppf(0.975,P-1)
        H['E2'].append((abs(Tb-th), np.sqrt(tk**2*vs+tp**2*vp)))
    out={}
    for k,v in H.items():
        v=np.array(v); out[k]=f"{np.mean(v[:,0]<=v[:,1]):.3f} w{np.median(v[:,1]):.4f}"
    return out
cases=[(2,.05,.1,.3),(2,0,.3,.5),(2,.02,.2,.5),(2,.1,.1,.3),(2,.01,.3,.5),(2,.03,.3,.5),(2,0,0,.8),(3,.05,.1,.3),(3,.005,.4,.3),(3,0,0,.8),(3,.03,.3,.3),(5,.02,.2,.5),(5,.05,.1,.3)]
for c in cases:
    print(c, sim(*c, sims=int(sys.argv[1])), flush=True)
