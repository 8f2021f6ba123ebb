#!/usr/bin/env bash
# warp vs mergekit (CPU) on the nearest operations mergekit has, same inputs, same run:
#   M=2: mergekit `nuslerp` with a base model (task-vector SLERP per tensor, t = 1/2)
#        vs `warp-slerp p1 p2 --init base`, and the outputs compared value by value;
#   M=3: mergekit `task_arithmetic` (weights 1/3) vs `warp-lerp p1 p2 p3 --init base`.
# mergekit computes in float32 (dtype: float32) and writes bfloat16 (out_dtype), as warp does.
#
#   bench/mergekit.sh 2GB        (needs `pip install mergekit`; MERGEKIT_VENV points at its venv)
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-2GB}"
reps="${REPS:-3}"
V="${MERGEKIT_VENV:-$HOME/.cache/warp/mergekit-venv}"
[ -x "$V/bin/mergekit-yaml" ] || { echo "mergekit not found in $V: python3 -m venv $V && $V/bin/pip install mergekit" >&2; exit 1; }
W="${BENCH_DIR:-target/bench}/mergekit-$size"
T=target/release
cargo build --release --quiet --bins
rm -rf "$W"; mkdir -p "$W"
res="$W/results.txt"; : > "$res"
measure() {
  local label="$1"; shift
  sync
  /usr/bin/time -f "%e %M" -o "$W/time.tmp" "$@" >/dev/null 2>"$W/err.tmp" || { cat "$W/err.tmp" >&2; exit 1; }
  echo "$label $(tail -n1 "$W/time.tmp")" >> "$res"
  echo "  $label: $(tail -n1 "$W/time.tmp") (s, KiB)" >&2
}
$T/warp-fixture --size "$size" --dtype bf16 -o "$W/base" -q >/dev/null
for k in 1 2 3; do $T/warp-fixture --size "$size" --dtype bf16 --base-seed 0 --seed "$k" -o "$W/p$k" -q >/dev/null; done
cat > "$W/nuslerp.yml" <<YML
merge_method: nuslerp
base_model: $W/base
models:
  - model: $W/p1
    parameters: {weight: 1.0}
  - model: $W/p2
    parameters: {weight: 1.0}
dtype: float32
out_dtype: bfloat16
YML
cat > "$W/task_arithmetic.yml" <<YML
merge_method: task_arithmetic
base_model: $W/base
models:
  - model: $W/p1
    parameters: {weight: 0.3333333333333333}
  - model: $W/p2
    parameters: {weight: 0.3333333333333333}
  - model: $W/p3
    parameters: {weight: 0.3333333333333333}
dtype: float32
out_dtype: bfloat16
YML
mk=(--no-cuda --lazy-unpickle --no-copy-tokenizer --no-write-model-card --quiet)
cat "$W"/base/*.safetensors "$W"/p*/*.safetensors > /dev/null
for r in $(seq "$reps"); do
  rm -rf "$W"/out-*
  measure mergekit-nuslerp-m2 "$V/bin/mergekit-yaml" "$W/nuslerp.yml" "$W/out-mk-slerp" "${mk[@]}"
  measure warp-slerp-m2 $T/warp-slerp "$W/p1" "$W/p2" --init "$W/base" -o "$W/out-warp-slerp" -q
  measure mergekit-task-arithmetic-m3 "$V/bin/mergekit-yaml" "$W/task_arithmetic.yml" "$W/out-mk-ta" "${mk[@]}"
  measure warp-lerp-m3 $T/warp-lerp "$W/p1" "$W/p2" "$W/p3" --init "$W/base" -o "$W/out-warp-lerp" -q
done
py="${WARP_PYTHON:-python3}"
echo "nuslerp vs warp-slerp: $("$py" bench/compare_bf16.py "$W/out-warp-slerp" "$W/out-mk-slerp")" >> "$res"
echo "task_arithmetic vs warp-lerp: $("$py" bench/compare_bf16.py "$W/out-warp-lerp" "$W/out-mk-ta")" >> "$res"
python3 - "$res" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list); notes = []
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 3 and p[0].startswith(("mergekit", "warp")):
        rows[p[0]].append((float(p[1]), int(p[2])))
    else:
        notes.append(line.strip())
med = {k: (statistics.median(t for t, _ in v), max(m for _, m in v)) for k, v in rows.items()}
print("| run | median wall (s) | max RSS (MiB) | runs |\n|---|---|---|---|")
for k, (t, m) in med.items():
    print(f"| {k} | {t:.2f} | {m/1024:.0f} | {len(rows[k])} |")
for ours, theirs in [("warp-slerp-m2", "mergekit-nuslerp-m2"), ("warp-lerp-m3", "mergekit-task-arithmetic-m3")]:
    if ours in med and theirs in med:
        print(f"\n{ours} vs {theirs}: {med[theirs][0]/med[ours][0]:.1f}× faster, {med[theirs][1]/med[ours][1]:.1f}× less peak RSS")
for n in notes: print("\n" + n)
PY
