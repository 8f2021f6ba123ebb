#!/usr/bin/env python3
"""The WARP paper's qualitative claims, measured on `warp run` folders (docs/RESULTS.md).

    python3 bench/claims.py RUN_DIR [RUN_DIR ...]     (stdlib only)

Reads each folder's eval.csv (warp eval), iter-*/slerp-angles.json (warp-slerp --report) and
prints one Markdown table per claim, one row per folder (seed):

1. EMA vs init anchor: reward of the EMA-anchored policy trajectory at the KL of the
   init-anchored run's last checkpoint (linear interpolation along the trajectory, starting at
   the SFT point), minus the init-anchored reward. Positive = EMA anchor better at equal KL.
2. SLERP of the M policies vs each final policy and vs LERP (reward and KL).
3. Angles between the task vectors (global, and the range over tensors).
4. LITI curve vs RL trajectories: for each policy/EMA checkpoint of the iteration, the LITI
   curve's reward at the same KL minus the checkpoint's reward (only where the curve spans that
   KL). Positive = the curve is above.
5. Iteration 2 vs iteration 1: the iteration-2 LITI curve minus the iteration-1 curve at equal
   KL, over the KL range both span; and the best reward of each.
"""
import csv
import json
import os
import sys


def load(run):
    with open(os.path.join(run, "eval.csv")) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("kl", "reward"):
            r[k] = float(r[k])
        for k in ("iteration", "run", "step"):
            r[k] = int(r[k]) if r[k] else None
        r["eta"] = float(r["eta"]) if r["eta"] else None
    return rows


def interp(curve, x):
    """y of the piecewise-linear curve [(x, y)] (sorted by x) at x, or None outside it."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def upper(points):
    """Points sorted by KL, for interpolation (a trajectory is monotone enough in KL here)."""
    return sorted(points)


def main(runs):
    data = {run: load(run) for run in runs}
    name = {run: os.path.basename(os.path.normpath(run)) for run in runs}

    print("## 1. EMA anchor vs init anchor at comparable KL (iteration 1)\n")
    print("| run | m | init-anchor final: KL, reward | EMA-anchor reward at that KL | difference |")
    print("|---|---|---|---|---|")
    for run, rows in data.items():
        sft = next(r for r in rows if r["kind"] == "sft")
        for m in sorted({r["run"] for r in rows if r["kind"] == "anchor_init"}):
            ai = sorted((r for r in rows if r["kind"] == "anchor_init" and r["run"] == m),
                        key=lambda r: r["step"])
            ema_traj = [(sft["kl"], sft["reward"])] + [
                (r["kl"], r["reward"]) for r in rows
                if r["kind"] == "policy" and r["iteration"] == 1 and r["run"] == m]
            last = ai[-1]
            y = interp(upper(ema_traj), last["kl"])
            diff = "n/a (outside)" if y is None else f"{y - last['reward']:+.3f}"
            ys = "n/a" if y is None else f"{y:.3f}"
            print(f"| {name[run]} | {m} | {last['kl']:.3f}, {last['reward']:.3f} | {ys} | {diff} |")

    print("\n## 2. SLERP vs the policies and LERP\n")
    print("| run | iter | policies (final): KL, reward | SLERP: KL, reward | LERP: KL, reward |")
    print("|---|---|---|---|---|")
    for run, rows in data.items():
        for i in sorted({r["iteration"] for r in rows if r["kind"] == "slerp"}):
            pols = []
            for m in sorted({r["run"] for r in rows if r["kind"] == "policy" and r["iteration"] == i}):
                p = max((r for r in rows if r["kind"] == "policy" and r["iteration"] == i
                         and r["run"] == m), key=lambda r: r["step"])
                pols.append(f"{p['kl']:.3f}, {p['reward']:.3f}")
            s = next(r for r in rows if r["kind"] == "slerp" and r["iteration"] == i)
            l_ = next(r for r in rows if r["kind"] == "lerp" and r["iteration"] == i)
            print(f"| {name[run]} | {i} | {' / '.join(pols)} | {s['kl']:.3f}, {s['reward']:.3f} "
                  f"| {l_['kl']:.3f}, {l_['reward']:.3f} |")

    print("\n## 3. Angles between task vectors (degrees)\n")
    print("| run | iter | global | per tensor: min – median – max |")
    print("|---|---|---|---|")
    for run in runs:
        i = 1
        while os.path.exists(os.path.join(run, f"iter-{i}", "slerp-angles.json")):
            with open(os.path.join(run, f"iter-{i}", "slerp-angles.json")) as f:
                a = json.load(f)
            g = a["global"]["angles_deg"][0][1]
            per = sorted(t["angles_deg"][0][1] for t in a["tensors"].values()
                         if t.get("angles_deg"))
            med = per[len(per) // 2]
            print(f"| {name[run]} | {i} | {g:.1f} | {per[0]:.1f} – {med:.1f} – {per[-1]:.1f} |")
            i += 1

    print("\n## 4. LITI curve vs the RL trajectories (per iteration)\n")
    print("| run | iter | checkpoints compared | above the curve | mean (curve − checkpoint) |")
    print("|---|---|---|---|---|")
    for run, rows in data.items():
        for i in sorted({r["iteration"] for r in rows if r["kind"] == "liti"}):
            curve = upper([(r["kl"], r["reward"]) for r in rows
                           if r["kind"] == "liti" and r["iteration"] == i])
            gaps = []
            for r in rows:
                if r["kind"] in ("policy", "ema") and r["iteration"] == i:
                    y = interp(curve, r["kl"])
                    if y is not None:
                        gaps.append(y - r["reward"])
            if gaps:
                above = sum(g < 0 for g in gaps)
                print(f"| {name[run]} | {i} | {len(gaps)} | {above} | {sum(gaps) / len(gaps):+.3f} |")

    print("\n## 5. Iteration 2 vs iteration 1 (LITI curves)\n")
    print("| run | KL range compared | mean (it2 − it1) at equal KL | best reward it1 | best reward it2 |")
    print("|---|---|---|---|---|")
    for run, rows in data.items():
        c = {i: upper([(r["kl"], r["reward"]) for r in rows
                       if r["kind"] == "liti" and r["iteration"] == i]) for i in (1, 2)}
        if not c[1] or not c[2]:
            continue
        lo = max(c[1][0][0], c[2][0][0])
        hi = min(c[1][-1][0], c[2][-1][0])
        xs = [lo + (hi - lo) * k / 20 for k in range(21)] if hi > lo else []
        d = [interp(c[2], x) - interp(c[1], x) for x in xs]
        mean = f"{sum(d) / len(d):+.3f}" if d else "n/a"
        print(f"| {name[run]} | {lo:.3f} – {hi:.3f} | {mean} | {max(y for _, y in c[1]):.3f} "
              f"| {max(y for _, y in c[2]):.3f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.stderr.write(__doc__)
        sys.exit(2)
    main(sys.argv[1:])
