#!/usr/bin/env python3
"""Closed-form self-checks of the Python reference (st.py, merge_ref.py, make_ckpt.py,
recipe_affine_ref.py).
Run: python3 tests/ref/selftest.py"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import merge_ref  # noqa: E402
import st  # noqa: E402


def run(*args, ok=True):
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    assert (r.returncode == 0) == ok, (args, r.returncode, r.stderr)
    return r


def load(p):
    return {n: a for n, (dt, a) in st.load_checkpoint(p).items()}


def main():
    st._selftest()
    # --- bf16 RNE (ties to even), hand-picked f32 bit patterns
    for inp, exp in [(0x3F808000, 0x3F80), (0x3F818000, 0x3F82), (0x3F80C000, 0x3F81),
                     (0x3F800001, 0x3F80), (0xBF808000, 0xBF80), (0xBF818000, 0xBF82)]:
        got = int(st.f32_to_bf16_bits(np.array([inp], np.uint32).view(np.float32))[0])
        assert got == exp, (hex(inp), hex(got))
    assert int(st.f64_to_bf16_bits(np.array([np.nan]))[0]) & 0x7FFF > 0x7F80  # NaN stays NaN

    # --- slerp closed forms on raw vectors
    s = np.array([3.0, 0.0, 0.0, 4.0])
    d = np.array([0.0, 5.0, 0.0, 0.0])
    r = merge_ref.slerp(s, d, 0.5, 0.9995)
    assert np.allclose(r, (s + d) / math.sqrt(2), rtol=0, atol=1e-15) and abs(np.linalg.norm(r) - 5) < 1e-14
    assert np.array_equal(merge_ref.slerp(s, -s, 0.5, 0.9995), np.zeros(4))        # antiparallel -> LERP
    assert np.array_equal(merge_ref.slerp(np.zeros(4), d, 0.5, 0.9995), 0.5 * d)  # zero -> LERP
    assert np.array_equal(merge_ref.slerp(s, 2 * s, 0.5, 0.9995), 1.5 * s)        # parallel -> LERP
    r = merge_ref.slerp(s, d, 0.25, 0.9995)  # Omega = 90 deg: coefficients cos/sin of lambda*90
    assert np.allclose(r, math.cos(math.pi / 8) * s + math.sin(math.pi / 8) * d, atol=1e-15)

    tmp = tempfile.mkdtemp()
    mk, mr = os.path.join(HERE, "make_ckpt.py"), os.path.join(HERE, "merge_ref.py")
    c = lambda *p: os.path.join(tmp, *p)  # noqa: E731

    # --- orthogonal equal-norm task vectors: merged task vector = (d1 + d2)/sqrt(2), norm kept
    run(mk, "--out", c("orth"), "--m", "2", "--dtype", "bf16", "--kind", "orthogonal", "--shards", "3", "--with-int")
    for ang in ("tensor", "layer", "global"):
        run(mr, "slerp", "--init", c("orth", "init"), c("orth", "p1"), c("orth", "p2"), "--angle", ang,
            "--eta", "0", "--eta", "1", "--eta", "1.5", "--out", c("o-" + ang))
    init, p1, p2 = load(c("orth", "init")), load(c("orth", "p1")), load(c("orth", "p2"))
    for ang in ("tensor", "layer", "global"):
        e0, e1 = load(c("o-" + ang, "eta-0.00.safetensors")), load(c("o-" + ang, "eta-1.00.safetensors"))
        e15 = load(c("o-" + ang, "eta-1.50.safetensors"))
        assert np.array_equal(e0["model.position_ids"], init["model.position_ids"])
        for n in init:
            if n == "model.position_ids":
                continue
            d1, d2, tv = p1[n] - init[n], p2[n] - init[n], e1[n] - init[n]
            assert np.array_equal(e0[n], init[n]), n                              # eta=0 -> init exactly
            assert np.allclose(tv, (d1 + d2) / math.sqrt(2), rtol=0, atol=1e-15), n
            assert abs(np.linalg.norm(tv) - np.linalg.norm(d1)) < 1e-15, n
            assert np.allclose(e15[n], init[n] + 1.5 * tv, rtol=0, atol=1e-15), n
    # eta=1 equals the plain merge exactly
    run(mr, "slerp", "--init", c("orth", "init"), c("orth", "p1"), c("orth", "p2"), "--out", c("o-plain"))
    plain = load(c("o-plain", "merged.safetensors"))
    assert all(np.array_equal(plain[n], e1[n]) for n in plain)
    # LITI on the merge reproduces the eta outputs; eta=0 / 1 exact
    run(mr, "liti", "--init", c("orth", "init"), "--merged", c("o-plain", "merged.safetensors"),
        "--eta", "0", "--eta", "1", "--eta", "1.5", "--out", c("liti"))
    l0, l1, l15 = (load(c("liti", f"eta-{e}.safetensors")) for e in ("0.00", "1.00", "1.50"))
    for n in init:
        assert np.array_equal(l0[n], init[n]) and np.array_equal(l1[n], plain[n]), n
        assert np.array_equal(l15[n], e15[n]), n

    # --- slerp of M identical policies returns that policy
    run(mk, "--out", c("ident"), "--m", "3", "--dtype", "bf16", "--kind", "identical")
    run(mr, "slerp", "--init", c("ident", "init"), c("ident", "p1"), c("ident", "p2"), c("ident", "p3"),
        "--out", c("i-out"))
    p, out = load(c("ident", "p1")), load(c("i-out", "merged.safetensors"))
    for n in p:
        assert np.allclose(out[n], p[n], rtol=0, atol=1e-17), n
        assert np.array_equal(st.f64_to_bf16_bits(out[n]), st.f64_to_bf16_bits(p[n])), n

    # --- antiparallel -> init; parallel (d_m = m d_1) -> LERP; zero -> 0.5 d_2
    for kind, m in (("antiparallel", 2), ("parallel", 3), ("zero", 2)):
        run(mk, "--out", c(kind), "--m", str(m), "--dtype", "f16", "--kind", kind)
        pols = [c(kind, f"p{i + 1}") for i in range(m)]
        run(mr, "slerp", "--init", c(kind, "init"), *pols, "--out", c(kind + "-out"))
        i0, o = load(c(kind, "init")), load(c(kind + "-out", "merged.safetensors"))
        ps = [load(q) for q in pols]
        for n in i0:
            d1 = ps[0][n] - i0[n]
            want = {"antiparallel": i0[n], "parallel": i0[n] + 2 * d1,  # (1/2)(1+2)=1.5, then (2/3)1.5+(1/3)3 = 2
                    "zero": i0[n] + 0.5 * (ps[1][n] - i0[n])}[kind]
            assert np.allclose(o[n], want, rtol=0, atol=1e-15), (kind, n)
        rep = __import__("json").load(open(c(kind + "-out", "report.json")))
        a01 = rep["tensors"]["lm_head.weight"]["angles_deg"][0][1]
        if kind == "antiparallel":
            assert a01 == 180.0, a01
        elif kind == "parallel":
            assert a01 < 1e-5, a01  # acos near 1 is ill-conditioned: ~1e-6 deg of rounding
        else:
            assert a01 is None, a01

    # --- lerp (default weights, explicit weights) and ema
    run(mk, "--out", c("rnd"), "--m", "3", "--dtype", "f32", "--kind", "random", "--shards", "2")
    ck = [c("rnd", x) for x in ("init", "p1", "p2", "p3")]
    run(mr, "lerp", "--init", ck[0], *ck[1:], "--out", c("lerp"))
    run(mr, "lerp", "--init", ck[0], *ck[1:], "--weights", "0.5", "0.25", "1.0", "--out", c("lerpw"))
    run(mr, "ema", "--mu", "0.25", *ck, "--out", c("ema"))
    t = [load(x) for x in ck]
    a, w, e = (load(c(x, y)) for x, y in (("lerp", "merged.safetensors"), ("lerpw", "merged.safetensors"),
                                          ("ema", "ema.safetensors")))
    for n in t[0]:
        assert np.allclose(a[n], (t[1][n] + t[2][n] + t[3][n]) / 3, rtol=0, atol=1e-15), n
        assert np.allclose(w[n], t[0][n] + 0.5 * (t[1][n] - t[0][n]) + 0.25 * (t[2][n] - t[0][n])
                           + (t[3][n] - t[0][n]), rtol=0, atol=1e-15), n
        want = 0.75 ** 3 * t[0][n] + 0.75 ** 2 * 0.25 * t[1][n] + 0.75 * 0.25 * t[2][n] + 0.25 * t[3][n]
        assert np.allclose(e[n], want, rtol=0, atol=1e-15), n

    # --- non-float tensors must be identical across inputs
    bad = c("bad.safetensors")
    tens = st.load_checkpoint(c("orth", "p1"), raw=True)
    tens["model.position_ids"] = ("I64", tens["model.position_ids"][1] + 1)
    st.write_file(bad, tens)
    r = run(mr, "slerp", "--init", c("orth", "init"), c("orth", "p1"), bad, "--out", c("bad-out"), ok=False)
    assert r.returncode == 1 and "model.position_ids" in r.stderr

    # --- recipe_affine_ref: settings by hand (gradient over 3 layers, first matching filter),
    # then linear and task_arithmetic on the orthogonal checkpoints against their formulas
    import recipe_affine_ref as ra  # noqa: E402
    assert ra.position("model.layers.1.mlp.up_proj.weight", 3) == 0.5
    assert ra.position("lm_head.weight", 3) == 0.0
    assert math.isclose(ra.value([0.2, 1.0], "x", 0.5), 0.6) and ra.value([1.0, 2.0, 6.0], "x", 0.75) == 4.0
    conds = [{"filter": "attn", "value": 3.0}, {"filter": "*", "value": [0.0, 1.0]}]
    assert ra.value(conds, "a.self_attn.q", 0.5) == 3.0 and ra.value(conds, "a.mlp.up", 0.25) == 0.25
    orth = [c("orth", x) for x in ("init", "p1", "p2")]
    for spec, want in [
        ({"method": "linear", "models": [{"path": orth[1], "weight": 1.0}, {"path": orth[2], "weight": 3.0}]},
         lambda x0, x1, x2: (x1 + 3 * x2) / 4),
        ({"method": "linear", "normalize": False,
          "models": [{"path": orth[1], "weight": 1.0}, {"path": orth[2], "weight": 3.0}]},
         lambda x0, x1, x2: x1 + 3 * x2),
        ({"method": "task_arithmetic", "base": orth[0], "lambda": 0.5,
          "models": [{"path": orth[1], "weight": 1.0}, {"path": orth[2], "weight": -2.0}]},
         lambda x0, x1, x2: x0 + 0.5 * ((x1 - x0) - 2 * (x2 - x0))),
        ({"method": "task_arithmetic", "base": orth[0], "normalize": True,
          "models": [{"path": orth[1], "weight": 1.0}, {"path": orth[2], "weight": 3.0}]},
         lambda x0, x1, x2: x0 + ((x1 - x0) + 3 * (x2 - x0)) / 4),
    ]:
        spec.update(layers=2, out=c("affine.safetensors"))
        with open(c("affine.json"), "w") as f:
            json.dump(spec, f)
        run(os.path.join(HERE, "recipe_affine_ref.py"), c("affine.json"))
        got = load(c("affine.safetensors"))
        for n in (n for n in init if init[n].dtype.kind == "f"):
            assert np.allclose(got[n], want(init[n], p1[n], p2[n]), rtol=0, atol=1e-15), (spec, n)
    print("selftest OK")


if __name__ == "__main__":
    main()
