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
#       (OUT/metrics.jsonl), CPU cores used by the run and by everything else meanwhile, and the
#       memory plan's estimate (--dry-run). With BEFORE_BIN (a warp-rl built from main at
#       d5d742c, before issue 16) the rounds alternate before / after.
#
#   bench/rl_scale.sh vs-trl [-- WARP-RL ARGS…]
#       A ~120M model (vocab 32000, hidden 768, 12 layers, 12 heads / 2 KV heads, MLP 2048,
#       untied: 122.4M parameters): warp-rl against TRL's RLOOTrainer (bench/trl_scale.py, TRL
#       from scripts/setup-trl.sh), interleaved, same prompts, reward program and settings:
#       8 prompts × 4 samples × 32 new tokens, β 0.1, lr 1e-5, 10 warm-up steps, clip 1,
#       temperature 0.9, micro-batches of MICRO (16) sequences on both sides, f32. Prints
#       samples/s, peak RSS and where the step's time went, for both.
#
#   bench/rl_scale.sh lora [-- WARP-RL ARGS…]
#       LoRA against full fine-tuning (issue 25) on the two models above (49.7M, 122.4M), rounds
#       interleaved (full, then --lora 8, per model and round): 8 prompts × 4 samples × 32 new
#       tokens, lr 1e-5 (full) / 1e-3 (LoRA), micro-batch MICRO, f32, CPU. Peak RSS, the plan's
#       estimate and samples/s per run, and the median step time by phase.
#
#   bench/rl_scale.sh gen
#       Generation on the ~120M model above (issue 24): generated tokens/s of warp's sampler as
#       the trainer calls it (examples/gen_bench.rs --n: `generate_batched`, each prompt
#       prefilled once, one generation batch of all 32 sequences) against transformers'
#       `generate` with num_return_sequences (bench/hf_generate.py --n), 8 prompts of 24 tokens
#       × 4 samples × 32 new tokens, temperature 1, no EOS stop, f32, at 1 and 2 threads
#       (THREADS_LIST), ROUNDS rounds interleaved (warp then transformers per thread count),
#       REPS timed calls per process after one warm-up. With BEFORE_BIN (a warp-rl built before
#       the change) also the rollout: STEPS warp-rl steps before / after, alternating, vs-trl's
#       settings (micro-batch MICRO, --metrics-every 0), the median `generate_s` and
#       `gen_tokens_per_s` of the steps after the first SKIP.
#
# Environment: ROUNDS (default 1 for mem49, 3 for vs-trl and gen), STEPS (3), SKIP (1), MODELS
# (lora: the models to run, default "m49 m120"), THREADS
# (libtorch's default), MICRO (16), BENCH_DIR (default target/bench). Arguments after `--` go to
# warp-rl (e.g. --micro-batch 8).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-torch.sh
mode="${1:-}"
shift || true
[ "${1:-}" = "--" ] && shift
extra=("$@")
rounds="${ROUNDS:-$([ "$mode" = vs-trl ] || [ "$mode" = gen ] && echo 3 || echo 1)}"
micro="${MICRO:-16}"
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

# warp_run NAME BIN MODEL_DIR ROUND ARGS…: one warp-rl process (BIN), one JSON line in
# $W/results.jsonl.
warp_run() {
  local name=$1 bin=$2 dir=$3 round=$4
  shift 4
  local out="$W/run-$name-$round" plan=0
  rm -rf "$out"
  # The memory plan's estimate (the trainer before issue 16 has no --dry-run).
  if "$bin" --help | grep -q -- --dry-run; then
    plan=$("$bin" "$dir/model" --prompts "$dir/prompts.jsonl" -o "$out" \
      --reward "cmd:python3 bench/rl_reward.py" "$@" --dry-run |
      awk '/estimated peak/ {v=$3; u=$4; m=(u=="GiB")?2^30:(u=="MiB")?2^20:1; printf "%.0f", v * m}')
  fi
  timed "$bin" "$dir/model" --prompts "$dir/prompts.jsonl" -o "$out" \
    --reward "cmd:python3 bench/rl_reward.py" --steps "$steps" --seed "$round" \
    --threads "$threads" --save-every 1000000 -q "$@" > /dev/null
  "$tpy" - "$out/metrics.jsonl" "$name" "$round" "$skip" "$rss_kb" "$wall" "$own" "$others" \
    "$*" "$plan" >> "$W/results.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
kept = rows[int(sys.argv[4]):]
phase = {k: statistics.median(r[k] for r in kept) for k in ("generate_s", "reward_s", "train_s")
         if kept and k in kept[0]}
gen_rate = statistics.median(r["gen_tokens_per_s"] for r in kept) if kept else 0
print(json.dumps({"run": sys.argv[2], "round": int(sys.argv[3]), "args": sys.argv[9],
                  "samples_per_s": [r["samples_per_s"] for r in kept],
                  "completion_len": sum(r["completion_len"] for r in rows) / len(rows),
                  "peak_rss_kb": int(sys.argv[5]), "wall_s": float(sys.argv[6]),
                  "own_cores": float(sys.argv[7]), "others_cores": float(sys.argv[8]),
                  "plan_bytes": int(sys.argv[10]), "phase_s": phase,
                  "gen_tokens_per_s": gen_rate}))
EOF
  rm -rf "$out"
}

# trl_run NAME MODEL_DIR ROUND: one TRL process, one JSON line in $W/results.jsonl.
trl_run() {
  local name=$1 dir=$2 round=$3
  timed "$WARP_TRL_PYTHON" bench/trl_scale.py "$dir/model" --prompts "$dir/prompts.jsonl" \
    --reward "python3 bench/rl_reward.py" --steps "$steps" --skip "$skip" --batch 8 -n 4 \
    --micro-batch "$micro" --max-new-tokens 32 --lr 1e-5 --threads "$threads" --seed "$round" \
    2> "$W/trl.err" > "$W/trl.out" || { cat "$W/trl.err" >&2; exit 1; }
  "$tpy" - "$W/trl.out" "$name" "$round" "$rss_kb" "$wall" "$own" "$others" "$skip" \
    >> "$W/results.jsonl" <<'EOF'
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(json.dumps({"run": sys.argv[2], "round": int(sys.argv[3]),
                  "args": f"trl {d['versions']['trl']}, micro-batch {d['micro_batch']}",
                  "samples_per_s": d["samples_per_s"][int(sys.argv[8]):],
                  "completion_len": d["mean_completion_tokens"],
                  "peak_rss_kb": int(sys.argv[4]), "wall_s": float(sys.argv[5]),
                  "own_cores": float(sys.argv[6]), "others_cores": float(sys.argv[7]),
                  "plan_bytes": 0, "phase_share": d["phase_share"]}))
EOF
}

report() {
  "$tpy" - "$W/results.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
names = list(dict.fromkeys(r["run"] for r in rows))
med = {n: statistics.median([x for r in rows if r["run"] == n for x in r["samples_per_s"]])
       for n in names}
rss = {n: statistics.median(r["peak_rss_kb"] for r in rows if r["run"] == n) for n in names}
print("| run | args | peak RSS (GiB), per round | plan estimate (GiB) | samples/s (median) | "
      "vs first row | CPU cores own / others | completion tokens |")
print("|---|---|---|---|---|---|---|---|")
for n in names:
    mine = [r for r in rows if r["run"] == n]
    per = ", ".join(f"{r['peak_rss_kb'] / 2**20:.2f}" for r in mine)
    plan = ", ".join(f"{r['plan_bytes'] / 2**30:.2f}" for r in mine if r["plan_bytes"]) or "–"
    load = ", ".join(f"{r['own_cores']:.2f} / {r['others_cores']:.2f}" for r in mine)
    clen = statistics.mean(r["completion_len"] for r in mine)
    print(f"| {n} | `{mine[0]['args']}` | {per} | {plan} | {med[n]:.2f} | "
          f"{med[n] / med[names[0]]:.2f}x | {load} | {clen:.1f} |")
for n in names:
    mine = [r for r in rows if r["run"] == n]
    if "phase_s" in mine[0] and mine[0]["phase_s"]:
        ph = {k: statistics.median(r["phase_s"][k] for r in mine) for k in mine[0]["phase_s"]}
        tot = sum(ph.values())
        print(f"\n{n}: step time (median per step): " + ", ".join(
            f"{k[:-2]} {v:.2f} s ({100 * v / tot:.0f} %)" for k, v in ph.items()))
    if "phase_share" in mine[0] and mine[0]["phase_share"]:
        ph = {k: statistics.median(r["phase_share"][k] for r in mine) for k in mine[0]["phase_share"]}
        print(f"\n{n}: share of step time: " + ", ".join(
            f"{k} {100 * v:.0f} %" for k, v in ph.items())
            + f", rest {100 * (1 - sum(ph.values())):.0f} %")
EOF
}

case "$mode" in
  mem49)
    model m49 --hidden 512 --layers 6 --heads 8 --kv-heads 2 --intermediate 1408 --vocab 32000
    : > "$W/results.jsonl"
    echo "rl_scale mem49: threads $threads, rounds $rounds, steps $steps (first $skip left out)" >&2
    for r in $(seq "$rounds"); do
      if [ -n "${BEFORE_BIN:-}" ]; then
        echo "  round $r: before" >&2
        warp_run before "$BEFORE_BIN" "$W/m49" "$r" --batch 16 -n 4 --max-new-tokens 64
      fi
      echo "  round $r: after" >&2
      warp_run after "$target/release/warp-rl" "$W/m49" "$r" --batch 16 -n 4 \
        --max-new-tokens 64 --device cpu "${extra[@]}"
    done
    report
    ;;
  vs-trl)
    source scripts/setup-trl.sh
    model m120 --hidden 768 --layers 12 --heads 12 --kv-heads 2 --intermediate 2048 --vocab 32000
    : > "$W/results.jsonl"
    echo "rl_scale vs-trl: threads $threads, rounds $rounds, steps $steps (first $skip left" \
      "out), micro-batch $micro" >&2
    for r in $(seq "$rounds"); do
      echo "  round $r: warp-rl" >&2
      warp_run warp-rl "$target/release/warp-rl" "$W/m120" "$r" --batch 8 -n 4 \
        --max-new-tokens 32 --lr 1e-5 --micro-batch "$micro" --device cpu "${extra[@]}"
      echo "  round $r: TRL" >&2
      trl_run "TRL RLOOTrainer" "$W/m120" "$r"
    done
    report
    ;;
  lora)
    model m49 --hidden 512 --layers 6 --heads 8 --kv-heads 2 --intermediate 1408 --vocab 32000
    model m120 --hidden 768 --layers 12 --heads 12 --kv-heads 2 --intermediate 2048 --vocab 32000
    : > "$W/results.jsonl"
    echo "rl_scale lora: threads $threads, rounds $rounds, steps $steps (first $skip left out)" >&2
    for r in $(seq "$rounds"); do
      for m in ${MODELS:-m49 m120}; do
        echo "  round $r: $m full, then LoRA" >&2
        common=(--batch 8 -n 4 --max-new-tokens 32 --micro-batch "$micro" --device cpu)
        warp_run "full $m" "$target/release/warp-rl" "$W/$m" "$r" "${common[@]}" --lr 1e-5 \
          "${extra[@]}"
        warp_run "lora $m" "$target/release/warp-rl" "$W/$m" "$r" "${common[@]}" --lr 1e-3 \
          --lora 8 "${extra[@]}"
      done
    done
    report
    ;;
  gen)
    model m120 --hidden 768 --layers 12 --heads 12 --kv-heads 2 --intermediate 2048 --vocab 32000
    cargo build --release --quiet --features rl --example gen_bench
    : > "$W/results.jsonl"
    gres="$W/gen.jsonl"
    : > "$gres"
    reps="${REPS:-3}"
    gargs=("$W/m120/model" --batch 8 --n 4 --prompt-len 24 --new-tokens 32 --reps "$reps")
    echo "rl_scale gen: threads ${THREADS_LIST:-1 2}, rounds $rounds x reps $reps" >&2
    for r in $(seq "$rounds"); do
      for t in ${THREADS_LIST:-1 2}; do
        echo "  round $r, $t thread(s): warp, then transformers" >&2
        "$target/release/examples/gen_bench" "${gargs[@]}" --threads "$t" --seed "$r" |
          grep '"rep":' >> "$gres"
        "$tpy" bench/hf_generate.py "${gargs[@]}" --threads "$t" --seed "$r" 2> "$W/hf.err" |
          grep '"rep":' >> "$gres" || { cat "$W/hf.err" >&2; exit 1; }
      done
      if [ -n "${BEFORE_BIN:-}" ]; then
        common=(--batch 8 -n 4 --max-new-tokens 32 --lr 1e-5 --micro-batch "$micro" --device cpu
                --metrics-every 0)
        echo "  round $r: rollout before, then after" >&2
        warp_run "rollout before" "$BEFORE_BIN" "$W/m120" "$r" "${common[@]}"
        warp_run "rollout after" "$target/release/warp-rl" "$W/m120" "$r" "${common[@]}" \
          "${extra[@]}"
      fi
    done
    "$tpy" - "$gres" "$W/results.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| threads | warp tokens/s (median) | transformers tokens/s (median) | warp / transformers |")
print("|---|---|---|---|")
for t in sorted({r["threads"] for r in rows}):
    med = {i: statistics.median(r["tokens_per_s"] for r in rows
                                if r["threads"] == t and r["impl"] == i)
           for i in ("warp", "transformers")}
    print(f"| {t} | {med['warp']:.1f} | {med['transformers']:.1f} | "
          f"{med['warp'] / med['transformers']:.2f}x |")
runs = [json.loads(line) for line in open(sys.argv[2])]
if runs:
    print("\n| rollout | generate_s per step (median) | gen tokens/s (median) | rounds |")
    print("|---|---|---|---|")
    for n in dict.fromkeys(r["run"] for r in runs):
        mine = [r for r in runs if r["run"] == n]
        print(f"| {n} | {statistics.median(r['phase_s']['generate_s'] for r in mine):.2f} | "
              f"{statistics.median(r['gen_tokens_per_s'] for r in mine):.1f} | {len(mine)} |")
EOF
    ;;
  *)
    echo "usage: bench/rl_scale.sh mem49|vs-trl|lora|gen [-- WARP-RL ARGS…]" >&2
    exit 2
    ;;
esac
