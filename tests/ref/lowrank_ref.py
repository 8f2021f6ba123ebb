#!/usr/bin/env python3
"""Fine-tunes of known rank for `warp extract-lora` (issue 25), made and measured with numpy.

    python lowrank_ref.py --base BASE --out DIR --rank R --seed S [--modules M ...]
                          [--transposed] [--perturb NAME ...]

Writes DIR/model (a checkpoint: the base with, for every module M, a task vector of exact rank R
added — D = U·diag(s)·Vᵀ with random orthonormal U, V and s = 1, 1/2, 1/3, …, times the
weight's scale; stored as the weight's dtype, so the stored task vector is rank R up to that
rounding — plus every tensor named by --perturb changed by noise), DIR/want.safetensors (the
base with the exact float64 deltas of the modules only, as F64: what an adapter of rank ≥ R
must reproduce) and DIR/svd.json: per module, the singular values of the stored task vector
(model − base in float64, numpy's full SVD) and its squared Frobenius norm. --transposed adds
the deltas as GPT-2's Conv1D stores them (weight [in, out]).
"""
import argparse
import json
import os
import shutil
import sys
from collections import OrderedDict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st import FLOATS, encode, load_checkpoint, to_float64, write_checkpoint, write_file  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modules", nargs="*", default=None)
    ap.add_argument("--transposed", action="store_true")
    ap.add_argument("--perturb", nargs="*", default=[])
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    base = load_checkpoint(a.base, raw=True)
    mods = a.modules if a.modules is not None else [
        n for n, (dt, arr) in base.items() if dt in FLOATS and arr.ndim == 2 and ".layers." in n]
    model, want, svd = OrderedDict(), OrderedDict(), OrderedDict()
    for n, (dt, arr) in base.items():
        model[n] = (dt, arr)
        if dt in FLOATS:
            want[n] = ("F64", to_float64(dt, arr))
        else:
            want[n] = (dt, arr)
    for n in mods:
        dt, arr = base[n]
        w = to_float64(dt, arr)
        shape = w.shape[::-1] if a.transposed else w.shape
        u, _ = np.linalg.qr(rng.standard_normal((shape[0], a.rank)))
        v, _ = np.linalg.qr(rng.standard_normal((shape[1], a.rank)))
        s = np.abs(w).mean() * 4.0 / np.arange(1, a.rank + 1)
        d = (u * s) @ v.T
        if a.transposed:
            d = d.T
        stored = to_float64(dt, encode(dt, w + d))
        model[n] = (dt, encode(dt, w + d))
        want[n] = ("F64", w + d)
        delta = stored - w
        if a.transposed:
            delta = delta.T
        sv = np.linalg.svd(delta, compute_uv=False)
        svd[n] = {"singular_values": sv.tolist(), "norm2": float((delta ** 2).sum())}
    for n in a.perturb:
        dt, arr = base[n]
        w = to_float64(dt, arr)
        model[n] = (dt, encode(dt, w + 0.1 * rng.standard_normal(w.shape)))
    os.makedirs(a.out, exist_ok=True)
    mdir = os.path.join(a.out, "model")
    write_checkpoint(mdir, model)
    cfg = os.path.join(a.base if os.path.isdir(a.base) else os.path.dirname(a.base), "config.json")
    if os.path.isfile(cfg):
        shutil.copy(cfg, os.path.join(mdir, "config.json"))
    write_file(os.path.join(a.out, "want.safetensors"), want, {"format": "pt"})
    with open(os.path.join(a.out, "svd.json"), "w") as f:
        json.dump(svd, f)
    print(f"lowrank_ref: wrote {a.out} ({len(mods)} modules of rank {a.rank})")


if __name__ == "__main__":
    main()
