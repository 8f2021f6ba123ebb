#!/usr/bin/env python3
"""shifts.py RUN...: which rewarded shift each cipher checkpoint chose — for every final RL
policy, SLERP (eta = 1) and LERP of a `warp run --task cipher` folder (or its docs/results copy),
the share of its evaluation samples in each style (shift k along a-j, upper case, other), and how
often two runs of an iteration prefer the same shift for a held-out word. Reads eval.csv,
eval-samples.csv(.gz) and the held-out prompts (fixtures/cipher/heldout.jsonl)."""
import csv, gzip, io, json, os, sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = [json.loads(l)["prompt"].rstrip(":") for l in open(os.path.join(ROOT, "fixtures/cipher/heldout.jsonl"))]
SHIFTS = [1, 3, 7, 9, 0, 5]


def style(word, out):
    out = out.strip()
    if out == word.upper():
        return "upper"
    for k in SHIFTS:
        if out == "".join(chr(ord("a") + (ord(c) - ord("a") + k) % 10) for c in word):
            return f"+{k}"
    return "other"


def samples(run):
    p = os.path.join(run, "eval-samples.csv")
    f = open(p, newline="") if os.path.exists(p) else io.TextIOWrapper(gzip.open(p + ".gz"), newline="")
    by_point = {}
    for r in csv.DictReader(f):
        by_point.setdefault(int(r["point"]), []).append((int(r["prompt"]), r["completion"]))
    return by_point


def main():
    for run in sys.argv[1:]:
        rows = list(csv.DictReader(open(os.path.join(run, "eval.csv"))))
        data = samples(run)
        finals = {}
        print(f"## {os.path.basename(run.rstrip('/'))}")
        print("| point | " + " | ".join(f"+{k}" for k in SHIFTS) + " | upper | other |")
        print("|---|" + "---|" * (len(SHIFTS) + 2))
        last = {}
        for k, r in enumerate(rows):
            if r["kind"] == "policy":
                key = (r["iteration"], r["run"])
                if key not in last or int(r["step"]) > int(rows[last[key]]["step"]):
                    last[key] = k
        picks = [(f"policy it{i} run {m}", k) for (i, m), k in sorted(last.items())]
        for k, r in enumerate(rows):
            if (r["kind"] == "slerp" and r["eta"] in ("1", "1.0", "1.000")) or r["kind"] == "lerp":
                picks.append((f"{r['kind']} it{r['iteration']}", k))
        for name, k in picks:
            c = Counter(style(WORDS[p], t) for p, t in data[k])
            n = sum(c.values())
            cells = [f"{100 * c[f'+{s}'] / n:.0f}" for s in SHIFTS] + [f"{100 * c['upper'] / n:.0f}", f"{100 * c['other'] / n:.0f}"]
            print(f"| {name} | " + " | ".join(cells) + " |")
            if name.startswith("policy"):
                pref = {}
                for p, t in data[k]:
                    pref.setdefault(p, Counter())[style(WORDS[p], t)] += 1
                finals[name] = {p: c.most_common(1)[0][0] for p, c in pref.items()}
        for i in sorted({n.split()[1] for n in finals}):
            runs = [n for n in finals if n.split()[1] == i]
            if len(runs) == 2:
                a, b = finals[runs[0]], finals[runs[1]]
                same = sum(a[p] == b[p] for p in a) / len(a)
                print(f"\n{i}: the two runs prefer the same style for {100 * same:.0f} % of the words")
        print()


main()
