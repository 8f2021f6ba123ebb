#!/usr/bin/env bash
# `warp merge RECIPE.yaml` vs mergekit 0.1.5 (`mergekit-yaml`, CPU) on the SAME recipe files, same
# inputs (a base and M = 3 fine-tunes made by `warp fixture`, bf16), interleaved runs: median wall
# time and peak RSS per tool and method, and warp's ratio to the I/O floor (reading every input
# once, `cat … > /dev/null`, plus writing the output once, `dd` of its size with fsync).
#
#   bench/merge_recipe.sh [SIZE[,SIZE…]] [METHOD…]
#
#   SIZE      fixture size per model, `warp fixture --size` syntax (default 1GB; the issue's
#             table: 1GB,4GB)
#   METHOD    any of the methods below (default: all of them)
#
# Methods: linear task_arithmetic ties dare_ties dare_linear breadcrumbs breadcrumbs_ties della
# della_linear model_stock slerp nuslerp multislerp karcher sce nearswap passthrough warp_slerp
# (warp_slerp is warp's own: no mergekit run).
#
# Environment:
#   REPS=3          rounds (each round runs every method of every tool once, interleaved)
#   WARP_ONLY=1     skip mergekit (no venv needed): warp's medians and its ratio to the floor
#   WARP_BASELINE=/path/to/warp
#                   also run another warp binary (labelled `base`) interleaved with this one,
#                   and compare the two outputs byte for byte (before/after an optimisation);
#                   the two alternate which runs first, round by round
#   BENCH_DIR=dir   where fixtures, outputs and results go (default target/bench)
#   MK_TIMEOUT=s    stop a mergekit run after s seconds (recorded as "> s", no memory figure)
#   WARP_REPS=1     warp runs per method and round (warp is cheap beside mergekit: with REPS=1
#                   and WARP_REPS=3 each warp figure is still a median)
#
# Results: $BENCH_DIR/merge-recipe-SIZE/results.txt (raw) and a markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
all=(linear task_arithmetic ties dare_ties dare_linear breadcrumbs breadcrumbs_ties della
  della_linear model_stock slerp nuslerp multislerp karcher sce nearswap passthrough warp_slerp)
sizes="${1:-1GB}"; shift || true
methods=("$@"); [ ${#methods[@]} -gt 0 ] || methods=("${all[@]}")
reps="${REPS:-3}"
warp_only="${WARP_ONLY:-0}"
baseline="${WARP_BASELINE:-}"
[ "$warp_only" = 1 ] || source scripts/setup-mergekit.sh
T=target/release
cargo build --release --quiet --bins

# The recipe of method $1 over fixtures in $2.
recipe() {
  local m="$1" W="$2" extra="" k
  case "$m" in
    ties|breadcrumbs|breadcrumbs_ties|dare_ties|dare_linear) extra=", density: 0.5" ;;
    della|della_linear) extra=", density: 0.5, epsilon: 0.1" ;;
  esac
  echo "merge_method: $m"
  case "$m" in
    linear|multislerp|nuslerp)
      [ "$m" = linear ] || echo "base_model: $W/base"
      echo "models:"
      for k in 1 2 3; do
        [ "$m" = nuslerp ] && [ $k = 3 ] && break # two models
        echo "  - model: $W/p$k"; echo "    parameters: {weight: 0.3333333333333333}"
      done ;;
    karcher)
      echo "models:"; for k in 1 2 3; do echo "  - model: $W/p$k"; done ;;
    model_stock|sce)
      echo "base_model: $W/base"
      echo "models:"; for k in 1 2 3; do echo "  - model: $W/p$k"; done
      [ "$m" = sce ] && echo "parameters: {select_topk: 0.5}" ;;
    slerp|nearswap)
      echo "base_model: $W/base"
      echo "models:"; echo "  - model: $W/base"; echo "  - model: $W/p1"
      if [ "$m" = slerp ]; then echo "parameters: {t: 0.5}"; else echo "parameters: {t: 0.001}"; fi ;;
    passthrough)
      echo "models:"; echo "  - model: $W/p1" ;;
    warp_slerp)
      echo "base_model: $W/base"
      echo "models:"; for k in 1 2 3; do echo "  - model: $W/p$k"; done
      echo "parameters: {etas: [0.5]}" ;;
    *)
      echo "base_model: $W/base"
      echo "models:"
      for k in 1 2 3; do
        echo "  - model: $W/p$k"; echo "    parameters: {weight: 0.3333333333333333$extra}"
      done ;;
  esac
  if [ "$m" = passthrough ]; then echo "dtype: bfloat16"
  else echo "dtype: float32"; echo "out_dtype: bfloat16"; fi
}

mk=(--no-cuda --lazy-unpickle --no-copy-tokenizer --no-write-model-card --quiet)
for size in ${sizes//,/ }; do
  W="${BENCH_DIR:-target/bench}/merge-recipe-$size"
  mkdir -p "$W"
  res="$W/results.txt"; : > "$res"
  measure() {
    local label="$1" rc=0; shift
    sync
    /usr/bin/time -f "%e %M" -o "$W/time.tmp" "$@" >/dev/null 2>"$W/err.tmp" || rc=$?
    if [ "$rc" = 124 ] && [ -n "${MK_TIMEOUT:-}" ]; then
      echo "$label $MK_TIMEOUT 0 stopped" >> "$res"
      echo "  $size $label: stopped after $MK_TIMEOUT s" >&2
      return
    fi
    [ "$rc" = 0 ] || { cat "$W/err.tmp" >&2; exit 1; }
    echo "$label $(tail -n1 "$W/time.tmp")" >> "$res"
    echo "  $size $label: $(tail -n1 "$W/time.tmp") (s, KiB)" >&2
  }
  # Fixtures are kept between runs of the script (same size → same bytes).
  [ -f "$W/base/model.safetensors.index.json" ] || [ -f "$W/base/model.safetensors" ] || {
    rm -rf "$W/base" "$W"/p?
    $T/warp fixture --size "$size" --dtype bf16 -o "$W/base" -q >/dev/null
    for k in 1 2 3; do $T/warp fixture --size "$size" --dtype bf16 --base-seed 0 --seed "$k" -o "$W/p$k" -q >/dev/null; done
  }
  for m in "${methods[@]}"; do recipe "$m" "$W" > "$W/$m.yml"; done
  cat "$W"/base/*.safetensors "$W"/p*/*.safetensors > /dev/null
  for r in $(seq "$reps"); do
    rm -rf "$W"/out-*
    sync; /usr/bin/time -f "%e %M" -o "$W/time.tmp" sh -c "cat $W/base/*.safetensors $W/p*/*.safetensors > /dev/null"
    echo "floor-read $(tail -n1 "$W/time.tmp")" >> "$res"
    out_bytes=$(du -cb "$W"/base/*.safetensors | tail -n1 | cut -f1)
    sync; /usr/bin/time -f "%e %M" -o "$W/time.tmp" dd if=/dev/zero of="$W/out-dd" bs=8M count=$((out_bytes / 8388608 + 1)) conv=fsync status=none
    echo "floor-write $(tail -n1 "$W/time.tmp")" >> "$res"; rm -f "$W/out-dd"
    for m in "${methods[@]}"; do
      if [ "$warp_only" != 1 ] && [ "$m" != warp_slerp ]; then
        measure "mergekit-$m" ${MK_TIMEOUT:+timeout "$MK_TIMEOUT"} \
          "$WARP_MERGEKIT_VENV/bin/mergekit-yaml" "$W/$m.yml" "$W/out-mk-$m" "${mk[@]}"
      fi
      # The baseline runs first in odd rounds and last in even ones: a run right after another
      # one was measured up to 1.3× slower (model_stock, whose code had not changed), so a
      # fixed order biases the ratio.
      if [ -n "$baseline" ] && [ $((r % 2)) = 1 ]; then
        measure "base-$m" "$baseline" merge "$W/$m.yml" -o "$W/out-base-$m" -q
      fi
      for _ in $(seq "${WARP_REPS:-1}"); do
        rm -rf "$W/out-warp-$m"
        measure "warp-$m" $T/warp merge "$W/$m.yml" -o "$W/out-warp-$m" -q
      done
      if [ -n "$baseline" ] && [ $((r % 2)) = 0 ]; then
        measure "base-$m" "$baseline" merge "$W/$m.yml" -o "$W/out-base-$m" -q
      fi
      if [ -n "$baseline" ]; then
        for f in "$W/out-warp-$m"/*.safetensors; do
          cmp -s "$f" "$W/out-base-$m/$(basename "$f")" || { echo "$size $m: $(basename "$f") differs from the baseline's" >&2; echo "differs-$m 0 0" >> "$res"; }
        done
        rm -rf "$W/out-base-$m"
      fi
      rm -rf "$W/out-warp-$m" "$W/out-mk-$m"
    done
  done
  echo "## $size"
  python3 - "$res" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
stopped = set()
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 3:
        rows[p[0]].append((float(p[1]), int(p[2])))
    elif len(p) == 4 and p[3] == "stopped":
        rows[p[0]].append((float(p[1]), 0))
        stopped.add(p[0])
med = {k: (statistics.median(t for t, _ in v), max(m for _, m in v)) for k, v in rows.items()}
floor = med["floor-read"][0] + med["floor-write"][0]
print(f"I/O floor: {med['floor-read'][0]:.2f} s read + {med['floor-write'][0]:.2f} s write = {floor:.2f} s "
      f"(medians of {len(rows['floor-read'])})\n")
nan = (float("nan"), 0)
print("| method | mergekit (s, MiB) | baseline warp (s, MiB) | warp (s, MiB) | warp vs mergekit | warp / baseline | warp / floor |")
print("|---|---|---|---|---|---|---|")
for k in rows:
    if not k.startswith("warp-"):
        continue
    m = k[len("warp-"):]
    (wt, wm), (mt, mm), (bt, bm) = med[k], med.get("mergekit-" + m, nan), med.get("base-" + m, nan)
    vs = f"{mt/wt:.1f}× faster, {mm/max(wm,1):.0f}× less memory" if mm else "—"
    mk = f"{mt:.1f}, {mm/1024:.0f}" if mm else "—"
    if "mergekit-" + m in stopped:
        # A run that was stopped: its time is a lower bound (median over the rounds).
        mk, vs = f"> {mt:.0f} (stopped), —", f"> {mt/wt:.1f}× faster"
    same = "" if "differs-" + m not in rows else " **outputs differ**"
    bw = f"{bt:.2f}, {bm/1024:.0f}" if bm else "—"
    ratio = f"{wt/bt:.2f}×{same}" if bm else "—"
    print(f"| {m} | {mk} | {bw} | {wt:.2f}, {wm/1024:.0f} | {vs} | {ratio} | {wt/floor:.2f}× |")
PY
done
