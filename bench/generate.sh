#!/usr/bin/env bash
# Generated tokens/s of our sampler (examples/gen_bench.rs) against transformers' `generate`
# (bench/hf_generate.py): same model folder, prompts and settings (f32, CPU, temperature 1, no
# top-k / top-p, no EOS stop), same thread count, batch 1 and 32. docs/PERFORMANCE.md records the
# figures and this command line.
#
#   bench/generate.sh
#
# Environment: ROUNDS (default 3) processes of each implementation per (model, batch), run
# alternately, ours then theirs, so that machine noise hits both alike; REPS (default 3) timed
# calls per process after one warm-up; THREADS (default: libtorch's default here) for both;
# PROMPT_LEN (16); NEW_TOKENS (64, capped by the model's max_position_embeddings); BENCH_DIR.
# Prints a Markdown table of the medians over all ROUNDS x REPS calls; the raw JSON lines are kept
# in $W/results-threadsN.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-torch.sh
rounds="${ROUNDS:-3}"
reps="${REPS:-3}"
prompt_len="${PROMPT_LEN:-16}"
new_tokens="${NEW_TOKENS:-64}"
py="$WARP_TORCH_PYTHON"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --features rl --example gen_bench --bin warp-fixture
W="${BENCH_DIR:-$target/bench}/generate"
mkdir -p "$W"

# A synthetic Llama of 26.2 M parameters (vocab 2048, hidden 512, 8 layers, 8 heads / 2 kv heads,
# MLP 1536); warp-fixture writes it atomically, so an existing config.json means a complete one.
synth="$W/synth-llama-26m"
if [ ! -f "$synth/config.json" ]; then
  "$target/release/warp-fixture" --size 110MB --dtype f32 -o "$synth" -q > /dev/null
fi
models=(fixtures/tiny-llama-f32-3shard "$synth")

threads="${THREADS:-$("$py" -c 'import torch; print(torch.get_num_threads())')}"
res="$W/results-threads$threads.jsonl"
: > "$res"
echo "threads: $threads, rounds: $rounds x reps: $reps, prompt: $prompt_len tokens" >&2

for model in "${models[@]}"; do
  max_pos=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["max_position_embeddings"])' \
    "$model/config.json")
  n=$(( new_tokens < max_pos - prompt_len ? new_tokens : max_pos - prompt_len ))
  for batch in 1 32; do
    args=("$model" --batch "$batch" --prompt-len "$prompt_len" --new-tokens "$n" --reps "$reps" \
          --threads "$threads")
    for r in $(seq "$rounds"); do
      echo "  $model batch $batch round $r" >&2
      "$target/release/examples/gen_bench" "${args[@]}" --seed "$r" | grep '"rep":' >> "$res"
      "$py" bench/hf_generate.py "${args[@]}" --seed "$r" 2> "$W/hf.err" | grep '"rep":' >> "$res" \
        || { cat "$W/hf.err" >&2; exit 1; }
    done
  done
done

"$py" - "$res" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
keys = list(dict.fromkeys((r["model"], r["batch"], r["new_tokens"]) for r in rows))
print("| model | batch | new tokens | ours tok/s (median) | transformers tok/s (median) | ours / transformers |")
print("|---|---|---|---|---|---|")
for model, batch, n in keys:
    med = {}
    for impl in ("warp", "transformers"):
        rates = [r["tokens_per_s"] for r in rows
                 if (r["model"], r["batch"], r["impl"]) == (model, batch, impl)]
        med[impl] = statistics.median(rates)
    name = model.rstrip("/").split("/")[-1]
    print(f"| {name} | {batch} | {n} | {med['warp']:.0f} | {med['transformers']:.0f} "
          f"| {med['warp'] / med['transformers']:.2f}x |")
EOF
