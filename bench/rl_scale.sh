#!/usr/bin/env bash
# warp-rl at scale on the CPU: peak RSS and samples/s on random Qwen2-shaped models made by
# transformers from a config (bench/rl_model.py; nothing large is committed). docs/PERFORMANCE.md
# records the figures and these command lines.
#
#   bench/rl_scale.sh mem49 [-- WARP-RL ARGS…]
#       The 49.7M-parameter case of issue 16: vocab 32000, hidden 512, 6 layers, 8 heads / 2 KV
#       heads, MLP 1408, untied head; 16 prompts × 4 samples × 64 new tokens (prompts of 16–32
#       words + BOS), the reward program bench/rl_reward.py, f32. ROUNDS processes of STEPS steps
#       each; per round: peak RSS (/usr/bin/time), samples/s of the steps after the first SKIP
#       (OUT/metrics.jsonl), CPU cores used by the run and by everything else meanwhile.
#
# Environment: ROUNDS (default 1), STEPS (3), SKIP (1), THREADS (libtorch's default), BENCH_DIR
# (default target/bench). Extra arguments after `--` go to warp-rl (e.g. --micro-batch 8).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-torch.sh
mode="${1:-}"
shift || true
[ "${1:-}" = "--" ] && shift
extra=("$@")
rounds="${ROUNDS:-1}"
steps="${STEPS:-3}"
skip="${SKIP:-1}"
target="${CARGO_TARGET_DIR:-target}"
tpy="$WARP_TORCH_PYTHON"
W="${BENCH_DIR:-$target/bench}/rl_scale"
mkdir -p "$W"
threads="${THREADS:-$("$tpy" -c 'import torch; print(torch.get_num_threads())')}"
cargo build --release --quiet --features rl --bin warp-rl

# model NAME ARGS…: makes $W/NAME/{model,prompts.jsonl} once.
model() {
  local name=$1
  shift
  if [ ! -f "$W/$name/.complete" ]; then
    rm -rf "$W/$name"
    "$tpy" bench/rl_model.py -o "$W/$name" "$@" >&2
    touch "$W/$name/.complete"
  fi
}

# busy: CPU seconds all processes have used since boot (/proc/stat, USER_HZ = 100).
busy() { awk '/^cpu /{printf "%.2f\n", ($2+$3+$4+$7+$8+$9)/100}' /proc/stat; }
# timed CMD…: runs CMD under /usr/bin/time; sets $rss_kb (peak RSS), $wall, $own (cores CMD
# used on average) and $others (cores everything else used meanwhile).
timed() {
  local b0 b1 t0 t1 rc=0
  b0=$(busy); t0=$(date +%s.%N)
  /usr/bin/time -f "%M %U %S" -o "$W/time.tmp" "$@" || rc=$?
  t1=$(date +%s.%N); b1=$(busy)
  read -r rss_kb u s < "$W/time.tmp"
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
  own=$(awk -v u="$u" -v s="$s" -v w="$wall" 'BEGIN{printf "%.2f", (u+s)/w}')
  others=$(awk -v b0="$b0" -v b1="$b1" -v u="$u" -v s="$s" -v w="$wall" \
    'BEGIN{printf "%.2f", (b1-b0-u-s)/w}')
  return "$rc"
}

# warp_run NAME MODEL_DIR ROUND ARGS…: one warp-rl process, one JSON line in $W/results.jsonl.
warp_run() {
  local name=$1 dir=$2 round=$3
  shift 3
  local out="$W/run-$name-$round"
  rm -rf "$out"
  timed "$target/release/warp-rl" "$dir/model" --prompts "$dir/prompts.jsonl" -o "$out" \
    --reward "cmd:python3 bench/rl_reward.py" --steps "$steps" --seed "$round" \
    --threads "$threads" --save-every 1000000 -q "$@" > /dev/null
  "$tpy" - "$out/metrics.jsonl" "$name" "$round" "$skip" "$rss_kb" "$wall" "$own" "$others" \
    "$*" >> "$W/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(json.dumps({"run": sys.argv[2], "round": int(sys.argv[3]), "args": sys.argv[9],
                  "samples_per_s": [r["samples_per_s"] for r in rows][int(sys.argv[4]):],
                  "completion_len": sum(r["completion_len"] for r in rows) / len(rows),
                  "peak_rss_kb": int(sys.argv[5]), "wall_s": float(sys.argv[6]),
                  "own_cores": float(sys.argv[7]), "others_cores": float(sys.argv[8])}))
EOF
  rm -rf "$out"
}

report() {
  "$tpy" - "$W/results.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| run | warp-rl args | peak RSS (GiB), per round | samples/s (median of kept steps) | "
      "CPU cores own / others | completion tokens |")
print("|---|---|---|---|---|---|")
for name in dict.fromkeys(r["run"] for r in rows):
    mine = [r for r in rows if r["run"] == name]
    rss = ", ".join(f"{r['peak_rss_kb'] / 2**20:.2f}" for r in mine)
    sps = [x for r in mine for x in r["samples_per_s"]]
    load = ", ".join(f"{r['own_cores']:.2f} / {r['others_cores']:.2f}" for r in mine)
    clen = statistics.mean(r["completion_len"] for r in mine)
    print(f"| {name} | `{mine[0]['args']}` | {rss} | "
          f"{statistics.median(sps) if sps else float('nan'):.2f} | {load} | {clen:.1f} |")
EOF
}

case "$mode" in
  mem49)
    model m49 --hidden 512 --layers 6 --heads 8 --kv-heads 2 --intermediate 1408 --vocab 32000
    : > "$W/results.jsonl"
    echo "rl_scale mem49: threads $threads, rounds $rounds, steps $steps (first $skip left out)" >&2
    for r in $(seq "$rounds"); do
      echo "  round $r" >&2
      warp_run mem49 "$W/m49" "$r" --batch 16 -n 4 --max-new-tokens 64 "${extra[@]}"
    done
    report
    ;;
  *)
    echo "usage: bench/rl_scale.sh mem49 [-- WARP-RL ARGS…]" >&2
    exit 2
    ;;
esac
