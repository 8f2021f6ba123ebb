#!/usr/bin/env python3
"""Independent float64 reference for WARP merges (SLERP / LERP / LITI / EMA).

Every output k is written as OUTDIR/<k>.safetensors (single file; float tensors stored as F64,
the exact float64 result; non-float tensors copied as-is) plus OUTDIR/report.json.
Checkpoints: folder with model.safetensors, folder with model.safetensors.index.json + shards,
or a single .safetensors file.
"""
import argparse
import json
import math
import os
import re
import sys
from collections import OrderedDict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st import FLOATS, load_checkpoint, write_file  # noqa: E402

LAYER_RE = re.compile(r"(^|\.)layers\.(\d+)\.")


def die(msg):
    print(f"merge_ref: error: {msg}", file=sys.stderr)
    sys.exit(1)


def load_all(paths):
    """Load checkpoints, check they match; -> (list of dicts, float names, passthrough dict)."""
    cks = [load_checkpoint(p) for p in paths]
    ref = cks[0]
    for p, ck in zip(paths[1:], cks[1:]):
        if set(ck) != set(ref):
            die(f"tensor names differ between {paths[0]} and {p}: "
                f"{sorted(set(ck) ^ set(ref))[:5]}")
        for n in ref:
            if ck[n][1].shape != ref[n][1].shape:
                die(f"shape of {n} differs: {ref[n][1].shape} in {paths[0]} vs {ck[n][1].shape} in {p}")
            if (ck[n][0] in FLOATS) != (ref[n][0] in FLOATS):
                die(f"{n} is float in one checkpoint and not in another ({p})")
    floats = [n for n in ref if ref[n][0] in FLOATS]
    passthrough = OrderedDict()
    for n in ref:
        if ref[n][0] in FLOATS:
            continue
        for p, ck in zip(paths[1:], cks[1:]):
            if ck[n][0] != ref[n][0] or not np.array_equal(ck[n][1], ref[n][1]):
                die(f"non-float tensor {n} differs between {paths[0]} and {p}")
        passthrough[n] = ref[n]
    return cks, floats, passthrough


def save(outdir, name, order, floats, passthrough):
    tensors = OrderedDict()
    for n in order:
        tensors[n] = ("F64", floats[n]) if n in floats else passthrough[n]
    write_file(os.path.join(outdir, f"{name}.safetensors"), tensors, {"format": "pt"})
    return name


def norm(v):
    return math.sqrt(float(np.dot(v, v)))


def slerp(s, d, lam, thr):
    """sin((1-l)W)/sinW * s + sin(lW)/sinW * d, LERP fallback for zero / (anti)parallel."""
    ns, nd = norm(s), norm(d)
    if ns == 0.0 or nd == 0.0:
        return (1 - lam) * s + lam * d
    cos = min(1.0, max(-1.0, float(np.dot(s, d)) / (ns * nd)))
    if abs(cos) > thr:
        return (1 - lam) * s + lam * d
    om = math.acos(cos)
    so = math.sin(om)
    return math.sin((1 - lam) * om) / so * s + math.sin(lam * om) / so * d


def groups(floats, mode):
    """Lists of tensor names sharing one angle."""
    if mode == "tensor":
        return [[n] for n in floats]
    if mode == "global":
        return [list(floats)]
    layers, rest = OrderedDict(), []
    for n in floats:
        m = LAYER_RE.search(n)
        if m:
            layers.setdefault(m.group(2), []).append(n)
        else:
            rest.append([n])
    return list(layers.values()) + rest


def stats(vecs):
    """norms and pairwise angle matrix (degrees; null where a norm is 0; diagonal exactly 0)."""
    norms = [norm(v) for v in vecs]
    ang = [[None] * len(vecs) for _ in vecs]
    for i, a in enumerate(vecs):
        for j, b in enumerate(vecs):
            if norms[i] > 0 and norms[j] > 0:
                c = min(1.0, max(-1.0, float(np.dot(a, b)) / (norms[i] * norms[j])))
                ang[i][j] = 0.0 if i == j else math.degrees(math.acos(c))
    return {"norms": norms, "angles_deg": ang}


def flat(deltas, names, m):
    return np.concatenate([deltas[n][m].ravel() for n in names])


def task_merge(a):
    paths = [a.init] + a.policies
    if len(a.policies) < 2:
        die(f"{a.method} needs at least 2 policies")
    cks, floats, passthrough = load_all(paths)
    init, pols = cks[0], cks[1:]
    M = len(pols)
    deltas = {n: [p[n][1] - init[n][1] for p in pols] for n in floats}
    merged = {}
    if a.method == "lerp":
        w = a.weights if a.weights is not None else [1.0 / M] * M
        if len(w) != M:
            die(f"--weights has {len(w)} values for {M} policies")
        for n in floats:
            acc = w[0] * deltas[n][0]
            for m in range(1, M):
                acc = acc + w[m] * deltas[n][m]
            merged[n] = init[n][1] + acc
    else:
        for g in groups(floats, a.angle):
            s = flat(deltas, g, 0)
            for m in range(1, M):  # iterative SLERP, lambda = 1/m (1-based m = 2..M)
                s = slerp(s, flat(deltas, g, m), 1.0 / (m + 1), a.lerp_threshold)
            off = 0
            for n in g:
                k = init[n][1].size
                merged[n] = init[n][1] + s[off:off + k].reshape(init[n][1].shape)
                off += k
    order = list(init)
    os.makedirs(a.out, exist_ok=True)
    outs = []
    if a.eta:
        for e in a.eta:
            res = {n: (1 - e) * init[n][1] + e * merged[n] for n in floats}
            outs.append(save(a.out, f"eta-{e:.2f}", order, res, passthrough))
    else:
        outs.append(save(a.out, "merged", order, merged, passthrough))
    layers = OrderedDict()
    for n in floats:
        m = LAYER_RE.search(n)
        if m:
            layers.setdefault(f"layers.{m.group(2)}", []).append(n)
    report = OrderedDict(method=a.method, outputs=outs, policies=a.policies)
    if a.method == "slerp":
        report.update(angle=a.angle, lerp_threshold=a.lerp_threshold)
    else:
        report["weights"] = a.weights if a.weights is not None else [1.0 / M] * M
    report["tensors"] = OrderedDict((n, stats([deltas[n][m].ravel() for m in range(M)])) for n in floats)
    report["layers"] = OrderedDict((k, stats([flat(deltas, v, m) for m in range(M)])) for k, v in layers.items())
    report["global"] = stats([flat(deltas, floats, m) for m in range(M)]) if floats else None
    return report


def task_liti(a):
    cks, floats, passthrough = load_all([a.init, a.merged])
    init, mer = cks
    os.makedirs(a.out, exist_ok=True)
    outs = []
    for e in a.eta:
        res = {n: (1 - e) * init[n][1] + e * mer[n][1] for n in floats}
        outs.append(save(a.out, f"eta-{e:.2f}", list(init), res, passthrough))
    return OrderedDict(method="liti", outputs=outs, eta=a.eta)


def task_ema(a):
    if len(a.checkpoints) < 2:
        die("ema needs at least 2 checkpoints")
    cks, floats, passthrough = load_all(a.checkpoints)
    ema = {n: cks[0][n][1] for n in floats}
    for ck in cks[1:]:
        ema = {n: (1 - a.mu) * ema[n] + a.mu * ck[n][1] for n in floats}
    os.makedirs(a.out, exist_ok=True)
    return OrderedDict(method="ema", outputs=[save(a.out, "ema", list(cks[0]), ema, passthrough)], mu=a.mu)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="method", required=True)
    eta_help = "LITI factor applied to the merge: out = (1-E)*init + E*merged; repeatable; output eta-%%.2f"
    sp = sub.add_parser("slerp", help="iterative SLERP of task vectors (WARP App. B.3)")
    lp = sub.add_parser("lerp", help="weighted average of task vectors")
    for p in (sp, lp):
        p.add_argument("--init", required=True, help="initialisation checkpoint")
        p.add_argument("policies", nargs="+", metavar="POLICY", help="policy checkpoints (>= 2)")
        p.add_argument("--eta", type=float, action="append", help=eta_help)
        p.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--angle", choices=["tensor", "layer", "global"], default="tensor",
                    help="granularity of the SLERP angle (default tensor)")
    sp.add_argument("--lerp-threshold", type=float, default=0.9995,
                    help="fall back to LERP when |cos| exceeds this (default 0.9995)")
    lp.add_argument("--weights", type=float, nargs="+", help="one weight per policy (default 1/M); "
                    "put policies before this option")
    li = sub.add_parser("liti", help="(1-eta)*init + eta*merged")
    li.add_argument("--init", required=True)
    li.add_argument("--merged", required=True)
    li.add_argument("--eta", type=float, action="append", required=True, help="repeatable")
    li.add_argument("--out", required=True)
    em = sub.add_parser("ema", help="ema = CK1; ema = (1-mu)*ema + mu*CKi")
    em.add_argument("--mu", type=float, required=True)
    em.add_argument("checkpoints", nargs="+", metavar="CK")
    em.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    report = {"slerp": task_merge, "lerp": task_merge, "liti": task_liti, "ema": task_ema}[a.method](a)
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"merge_ref: wrote {', '.join(report['outputs'])} to {a.out}")


if __name__ == "__main__":
    main()
