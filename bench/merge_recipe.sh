#!/usr/bin/env bash
# `warp merge RECIPE.yaml` vs mergekit 0.1.5 (`mergekit-yaml`, CPU) on the SAME recipe files, same
# inputs (a base and M = 3 fine-tunes made by `warp fixture`, bf16), interleaved runs: median wall
# time and peak RSS per tool and method, and warp's ratio to the I/O floor (reading every input
# once, `cat … > /dev/null`, plus writing the output once, `dd` of its size with fsync).
#
#   bench/merge_recipe.sh 1GB [METHOD…]     (default methods: task_arithmetic ties dare_ties
#                                            breadcrumbs model_stock della)
# Needs scripts/setup-mergekit.sh (sourced here). REPS=3 by default. Results: target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-1GB}"; shift || true
methods=("$@"); [ ${#methods[@]} -gt 0 ] || methods=(task_arithmetic ties dare_ties breadcrumbs model_stock della)
reps="${REPS:-3}"
source scripts/setup-mergekit.sh
W="${BENCH_DIR:-target/bench}/merge-recipe-$size"
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
$T/warp fixture --size "$size" --dtype bf16 -o "$W/base" -q >/dev/null
for k in 1 2 3; do $T/warp fixture --size "$size" --dtype bf16 --base-seed 0 --seed "$k" -o "$W/p$k" -q >/dev/null; done
for m in "${methods[@]}"; do
  case "$m" in
    ties|breadcrumbs|breadcrumbs_ties) extra=", density: 0.5" ;;
    dare_ties|dare_linear) extra=", density: 0.5" ;;
    della|della_linear) extra=", density: 0.5, epsilon: 0.1" ;;
    *) extra="" ;;
  esac
  {
    echo "merge_method: $m"
    echo "base_model: $W/base"
    echo "models:"
    for k in 1 2 3; do
      if [ "$m" = model_stock ]; then echo "  - model: $W/p$k"
      else echo "  - model: $W/p$k"; echo "    parameters: {weight: 0.3333333333333333$extra}"; fi
    done
    echo "dtype: float32"
    echo "out_dtype: bfloat16"
  } > "$W/$m.yml"
done
mk=(--no-cuda --lazy-unpickle --no-copy-tokenizer --no-write-model-card --quiet)
cat "$W"/base/*.safetensors "$W"/p*/*.safetensors > /dev/null
for r in $(seq "$reps"); do
  rm -rf "$W"/out-*
  sync; /usr/bin/time -f "%e %M" -o "$W/time.tmp" sh -c "cat $W/base/*.safetensors $W/p*/*.safetensors > /dev/null"
  echo "floor-read $(tail -n1 "$W/time.tmp")" >> "$res"
  out_bytes=$(du -cb "$W"/base/*.safetensors | tail -n1 | cut -f1)
  sync; /usr/bin/time -f "%e %M" -o "$W/time.tmp" dd if=/dev/zero of="$W/out-dd" bs=8M count=$((out_bytes / 8388608 + 1)) conv=fsync status=none
  echo "floor-write $(tail -n1 "$W/time.tmp")" >> "$res"; rm -f "$W/out-dd"
  for m in "${methods[@]}"; do
    measure "mergekit-$m" "$WARP_MERGEKIT_VENV/bin/mergekit-yaml" "$W/$m.yml" "$W/out-mk-$m" "${mk[@]}"
    measure "warp-$m" $T/warp merge "$W/$m.yml" -o "$W/out-warp-$m" -q
  done
done
python3 - "$res" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 3:
        rows[p[0]].append((float(p[1]), int(p[2])))
med = {k: (statistics.median(t for t, _ in v), max(m for _, m in v)) for k, v in rows.items()}
floor = med["floor-read"][0] + med["floor-write"][0]
print(f"I/O floor: {med['floor-read'][0]:.2f} s read + {med['floor-write'][0]:.2f} s write = {floor:.2f} s\n")
print("| method | mergekit (s, MiB) | warp (s, MiB) | warp is | warp / floor |\n|---|---|---|---|---|")
for k in rows:
    if not k.startswith("warp-"):
        continue
    m = k[len("warp-"):]
    (wt, wm), (mt, mm) = med[k], med.get("mergekit-" + m, (float("nan"), 0))
    print(f"| {m} | {mt:.1f}, {mm/1024:.0f} | {wt:.2f}, {wm/1024:.0f} | {mt/wt:.1f}× faster, "
          f"{mm/max(wm,1):.0f}× less memory | {wt/floor:.2f}× |")
PY
