"""The reward program of the RL scale benchmarks (bench/rl_scale.sh), used as
`--reward "cmd:python3 bench/rl_reward.py"` by warp-rl and called the same way (one process per
batch) by the TRL baseline: reads JSONL {"prompt", "completion"} on stdin, prints one number per
line: the share of the completion's words w<k> with k divisible by 7 (0 for an empty completion).
Cheap and deterministic, so that the benchmark measures the trainers, not the reward.
"""

import json
import sys


def score(completion):
    words = completion.split()
    if not words:
        return 0.0
    hits = sum(1 for w in words if w[:1] == "w" and w[1:].isdigit() and int(w[1:]) % 7 == 0)
    return hits / len(words)


def main():
    out = []
    for line in sys.stdin:
        if line.strip():
            out.append(f"{score(json.loads(line)['completion']):.6f}")
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))


if __name__ == "__main__":
    main()
