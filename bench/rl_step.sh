#!/usr/bin/env bash
# Samples/s of one RLOO step: `warp-rl` (feature `rl`) against TRL's `RLOOTrainer`
# (bench/trl_rloo.py), same model folder, prompts and settings: 16 prompts x 4 completions = 64
# samples per step, at most 8 new tokens, temperature 0.9, beta 0.1, lr 1e-4, the verifiable
# arithmetic reward, f32 on the CPU, the same torch thread count. docs/PERFORMANCE.md records the
# figures and this command line.
#
#   bench/rl_step.sh              # libtorch's default thread count (2 here)
#   THREADS=1 bench/rl_step.sh    # 1 thread: far less disturbed by other jobs on a shared machine
#
# Rows: warp-rl --anchor ema (WARP: policy with grad + EMA + frozen init scored each step),
# warp-rl --anchor init (policy + frozen init: one forward fewer), TRL RLOO (policy no-grad
# "old" log-probs + frozen reference + policy with grad).
#
# Environment: MODEL (default fixtures/arith/model), PROMPTS (fixtures/arith/train.jsonl);
# ROUNDS (default 5) processes of each, run in turn warp-ema, trl, warp-init, so that machine noise
# hits all alike; STEPS (default 30) steps per process, of which the first SKIP (2) are left out;
# THREADS (default: libtorch's default here) for all; BENCH_DIR. Prints a Markdown table of the
# medians over all kept steps of all rounds, with the CPU each process and everything else on the
# machine used while it ran (how contended the run was); raw JSON lines are kept in the bench
# folder.
#
# TRL comes from scripts/requirements-trl.txt through scripts/setup-trl.sh: one cached venv
#   ${WARP_CACHE:-$HOME/.cache/warp}/trl-<key>/
# that sees the project's torch venv through a .pth file (torch is not downloaded again) and pins
# every package of that venv as a constraint; the TRL backend of the RL stage uses the same.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-trl.sh
rounds="${ROUNDS:-5}"
steps="${STEPS:-30}"
skip="${SKIP:-2}"
model="${MODEL:-fixtures/arith/model}"
prompts="${PROMPTS:-fixtures/arith/train.jsonl}"
target="${CARGO_TARGET_DIR:-target}"
tpy="$WARP_TORCH_PYTHON"
[ -f "$model/config.json" ] || { echo "rl_step: no model at $model (set MODEL)" >&2; exit 1; }
[ -f "$prompts" ] || { echo "rl_step: no prompts at $prompts (set PROMPTS)" >&2; exit 1; }
cargo build --release --quiet --features rl --bin warp-rl

py="$WARP_TRL_PYTHON"

W="${BENCH_DIR:-$target/bench}/rl_step"
mkdir -p "$W"
res="$W/results.jsonl"
: > "$res"
threads="${THREADS:-$("$tpy" -c 'import torch; print(torch.get_num_threads())')}"
echo "threads: $threads, rounds: $rounds, steps: $steps (first $skip left out), model: $model" >&2

# busy: CPU time (s) all processes have used since boot, from /proc/stat (user nice system irq
# softirq steal, in USER_HZ = 100 ticks).
busy() { awk '/^cpu /{printf "%.2f\n", ($2+$3+$4+$7+$8+$9)/100}' /proc/stat; }
# timed CMD...: runs CMD (stdout to /dev/null unless redirected by the caller) under /usr/bin/time
# and sets $own and $others: the CPU cores that CMD itself (user + system time over wall time)
# and all other processes (the machine's busy time minus CMD's) kept busy on average while it ran.
# Their sum near 2 means the 2 cores were saturated.
timed() {
  local b0 b1 t0 t1 rc=0
  b0=$(busy); t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$W/time.tmp" "$@" || rc=$?
  t1=$(date +%s.%N); b1=$(busy)
  own=$(awk -v t0="$t0" -v t1="$t1" '{printf "%.2f", ($1+$2)/(t1-t0)}' "$W/time.tmp")
  others=$(awk -v b0="$b0" -v b1="$b1" -v t0="$t0" -v t1="$t1" '{printf "%.2f", (b1-b0-$1-$2)/(t1-t0)}' \
    "$W/time.tmp")
  return "$rc"
}

warp() {  # warp ANCHOR ROUND
  local out="$W/warp-$1"
  rm -rf "$out"
  timed "$target/release/warp-rl" "$model" --prompts "$prompts" -o "$out" --steps "$steps" \
    --batch 16 -n 4 --max-new-tokens 8 --temperature 0.9 --beta 0.1 --lr 1e-4 \
    --anchor "$1" --seed "$2" --threads "$threads" --save-every 1000000 -q > /dev/null
  "$tpy" - "$out/metrics.jsonl" "$1" "$2" "$skip" "$own" "$others" >> "$res" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(json.dumps({"impl": "warp-rl --anchor " + sys.argv[2], "round": int(sys.argv[3]),
                  "samples_per_s": [r["samples_per_s"] for r in rows][int(sys.argv[4]):],
                  "completion_len": sum(r["completion_len"] for r in rows) / len(rows),
                  "own_cores": float(sys.argv[5]), "others_cores": float(sys.argv[6])}))
EOF
}

for r in $(seq "$rounds"); do
  echo "  round $r: warp-rl --anchor ema" >&2
  warp ema "$r"
  echo "  round $r: trl" >&2
  timed "$py" bench/trl_rloo.py "$model" --prompts "$prompts" --steps "$steps" --skip "$skip" \
    --threads "$threads" --seed "$r" 2> "$W/trl.err" > "$W/trl.out" \
    || { cat "$W/trl.err" >&2; exit 1; }
  "$tpy" - "$W/trl.out" "$r" "$skip" "$own" "$others" >> "$res" <<'EOF'
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(json.dumps({"impl": "TRL RLOOTrainer", "round": int(sys.argv[2]),
                  "samples_per_s": d["samples_per_s"][int(sys.argv[3]):],
                  "completion_len": d["mean_completion_tokens"], "versions": d["versions"],
                  "phase_share": d["phase_share"],
                  "own_cores": float(sys.argv[4]), "others_cores": float(sys.argv[5])}))
EOF
  echo "  round $r: warp-rl --anchor init" >&2
  warp init "$r"
done

"$tpy" - "$res" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
impls = list(dict.fromkeys(r["impl"] for r in rows))
med = {i: statistics.median([x for r in rows if r["impl"] == i for x in r["samples_per_s"]])
       for i in impls}
trl = med["TRL RLOOTrainer"]
vers = next(r["versions"] for r in rows if "versions" in r)
print(f"TRL {vers['trl']}, torch {vers['torch']}, transformers {vers['transformers']}")
print("| implementation | samples/s (median) | per-round medians | CPU cores used, own / others | "
      "mean completion tokens | vs TRL |")
print("|---|---|---|---|---|---|")
for i in impls:
    mine = [r for r in rows if r["impl"] == i]
    per = ", ".join(f"{statistics.median(r['samples_per_s']):.1f}" for r in mine)
    clen = statistics.mean(r["completion_len"] for r in mine)
    load = ", ".join(f"{r['own_cores']:.2f} / {r['others_cores']:.2f}" for r in mine)
    print(f"| {i} | {med[i]:.1f} | {per} | {load} | {clen:.2f} | {med[i] / trl:.2f}x |")
t = [r for r in rows if "phase_share" in r]
ph = {k: statistics.median(r["phase_share"][k] for r in t) for k in t[0]["phase_share"]}
print("\nTRL, share of step time (median over rounds): "
      + ", ".join(f"{k} {100 * v:.0f} %" for k, v in ph.items())
      + f", rest (reward, advantages, backward, optimizer, loop) {100 * (1 - sum(ph.values())):.0f} %")
EOF
