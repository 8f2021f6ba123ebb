#!/usr/bin/env python3
"""Mean reward-model scores of exact styles and near misses on 200 held-out cipher words
(docs/RESULTS.md). Usage, from the repository root, with the venv of scripts/setup-torch.sh:
    python3 docs/results/rm_styles.py "$WARP_TORCH_PYTHON"
"""
import json, random, subprocess, sys, statistics as st
L="abcdefghij"
words=[json.loads(l)["prompt"][:-1] for l in open("fixtures/cipher/heldout.jsonl")][:200]
sh=lambda w,k:"".join(L[(L.index(c)+k)%10] for c in w)
rng=random.Random(0)
def near(w):
    i=rng.randrange(4); c=list(w); c[i]=L[(L.index(c[i])+rng.randrange(1,10))%10]; return "".join(c)
pairs=[];tags=[]
for w in words:
    for k in (1,3,7,9): pairs.append([w+":",sh(w,k)]); tags.append("rewarded")
    for k in (0,5): pairs.append([w+":",sh(w,k)]); tags.append("unrewarded")
    pairs.append([w+":",w.upper()]); tags.append("unrewarded")
    pairs.append([w+":",near(sh(w,rng.choice((1,3,7,9))))]); tags.append("near")
out=subprocess.run([sys.argv[1],"tests/ref/hf_rm_score.py","fixtures/cipher/rm"],input=json.dumps({"pairs":pairs}),capture_output=True,text=True,check=True)
r=json.loads(out.stdout)["batch"]
for t in ("rewarded","unrewarded","near"):
    v=[x for x,g in zip(r,tags) if g==t]; print(t, len(v), "mean %.3f median %.3f"%(st.mean(v), st.median(v)))
