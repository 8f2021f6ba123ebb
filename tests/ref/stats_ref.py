#!/usr/bin/env python3
"""Independent numpy reference for warp's evaluation statistics (src/stats), for tests/science.rs.

    python stats_ref.py < request.json > response.json

request:  {"seeds": [CSV_PATH, ...]       eval-samples.csv of each seed (same prompts)
           "indices": [[i, ...], ...]     the prompt indices of each bootstrap replicate
           "level": 0.95}
response: {"diff": {...}, "kl_diff": {...}, "gap": {...}} where each statistic has
           "undefined" / "undefined_one": replicates left out (the statistic undefined in some
           seed / in seed 0), and
           "one": {"value", "lo", "hi", "se"}             seed 0 alone (percentile interval)
           "all": {"value", "s2", "v_p", "w", "v_noise", "v_seed", "v_shared", "v"}   all seeds

The statistics, on the (mean KL, mean reward) of points 0..4 of a seed:
  diff    = reward[1] - reward[0]
  kl_diff = kl[1] - kl[0]
  gap     = mean over the common KL range of (upper envelope of points {0, 1, 2} minus upper
            envelope of points {0, 3, 4}), envelopes = Pareto-optimal points (found by pairwise
            dominance, not by a sweep) joined linearly.
The file is read with the csv module; per-prompt means over the samples, weighted means over
resampled prompts with numpy.
"""
import csv
import json
import sys

import numpy as np


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    n_pt = max(int(r["point"]) for r in rows) + 1
    n_pr = max(int(r["prompt"]) for r in rows) + 1
    n_s = max(int(r["sample"]) for r in rows) + 1
    kl = np.zeros((n_pt, n_pr, n_s))
    rw = np.zeros((n_pt, n_pr, n_s))
    for r in rows:
        i = (int(r["point"]), int(r["prompt"]), int(r["sample"]))
        kl[i] = float(r["kl"])
        rw[i] = float(r["reward"])
    return kl.mean(axis=2), rw.mean(axis=2)  # [point, prompt]


def pareto(pts):
    """Indices of the Pareto-optimal points (low kl, high reward), by kl."""
    keep = []
    for i, (ki, ri) in enumerate(pts):
        dominated = False
        for j, (kj, rj) in enumerate(pts):
            if j == i:
                continue
            weakly = kj <= ki and rj >= ri
            strictly = kj < ki or rj > ri
            if weakly and (strictly or j < i):
                dominated = True
                break
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: pts[i][0])


def gap(pts_a, pts_b):
    fa = np.array([pts_a[i] for i in pareto(pts_a)])
    fb = np.array([pts_b[i] for i in pareto(pts_b)])
    lo, hi = max(fa[0, 0], fb[0, 0]), min(fa[-1, 0], fb[-1, 0])
    if not hi > lo:
        return None
    xs = np.concatenate([fa[:, 0], fb[:, 0]])
    xs = np.unique(np.concatenate([xs[(xs > lo) & (xs < hi)], [lo, hi]]))
    d = np.interp(xs, fa[:, 0], fa[:, 1]) - np.interp(xs, fb[:, 0], fb[:, 1])
    return float(np.trapezoid(d, xs) / (hi - lo))


def stats(kl, rw):
    """The three statistics from the points' mean kl and reward (1-d arrays over points)."""
    pts = list(zip(kl.tolist(), rw.tolist()))
    return {
        "diff": rw[1] - rw[0],
        "kl_diff": kl[1] - kl[0],
        "gap": gap([pts[0], pts[1], pts[2]], [pts[0], pts[3], pts[4]]),
    }


def main():
    req = json.load(sys.stdin)
    seeds = [load(p) for p in req["seeds"]]
    idx = np.array(req["indices"])
    alpha = (1 - req["level"]) / 2
    k = len(seeds)
    full = [stats(kl.mean(axis=1), rw.mean(axis=1)) for kl, rw in seeds]
    reps = []  # reps[b][k] = dict of stats
    for draw in idx:
        reps.append([stats(kl[:, draw].mean(axis=1), rw[:, draw].mean(axis=1)) for kl, rw in seeds])
    out = {}
    for name in ("diff", "kl_diff", "gap"):
        # A replicate where the statistic is undefined in some seed is left out.
        rows = [[r[j][name] for j in range(k)] for r in reps]
        t = np.array([row for row in rows if None not in row], dtype=float)
        undefined = len(rows) - len(t)
        one = np.array([row[0] for row in rows if row[0] is not None], dtype=float)
        per_seed = np.array([f[name] for f in full])
        s2 = per_seed.var(ddof=1)
        v_p = t.mean(axis=1).var(ddof=1)
        w = t.var(axis=0, ddof=1).mean()
        v_noise = max(0.0, (w - v_p) / (k - 1))
        # The seeds' own part (K - 1 degrees of freedom) and the shared prompts' part.
        v_seed = s2 / k
        v_shared = max(0.0, v_p - v_noise)
        v = v_seed + v_shared
        out[name] = {
            "one": {
                "value": float(per_seed[0]),
                "lo": float(np.quantile(one, alpha)),
                "hi": float(np.quantile(one, 1 - alpha)),
                "se": float(one.std(ddof=1)),
            },
            "undefined": undefined,
            "undefined_one": len(rows) - len(one),
            "all": {
                "value": float(per_seed.mean()),
                "s2": float(s2),
                "v_p": float(v_p),
                "w": float(w),
                "v_noise": v_noise,
                "v_seed": v_seed,
                "v_shared": v_shared,
                "v": v,
            },
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
