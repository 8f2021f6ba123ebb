#!/usr/bin/env bash
# Throughput and peak-memory benchmarks of the streaming tools against the I/O floor measured in
# the same run (docs/PERFORMANCE.md records the figures and this command line).
#
#   bench/bench.sh convert 4GB     warp-convert bf16→f32→bf16 vs cat + dd of the same bytes
#   bench/bench.sh slerp 2GB       warp-slerp M=3, three η, vs cat of the 4 inputs + dd of 3 outputs
#   bench/bench.sh push 2GB        peak memory of `warp push` to the loopback hub (16 MiB parts)
#   bench/bench.sh budget 556MB    peak memory of warp-slerp (3 inputs) at --memory-budget 1B, 64KB,
#                                  1MB, 8MB, 64MB and the default, with the --dry-run estimate;
#                                  BASELINE_BIN=path/to/an/older/warp-slerp measures it too
#
# Each measurement runs REPS times (default 3) interleaved with its baseline; medians are printed
# as a Markdown table. Page cache is warm for every run alike (inputs are read once beforehand).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:?usage: bench/bench.sh convert|slerp|push|budget SIZE}"
size="${2:-2GB}"
reps="${REPS:-3}"
W="${BENCH_DIR:-target/bench}/$what-$size"
T=target/release
cargo build --release --quiet --bins
rm -rf "$W"; mkdir -p "$W"
res="$W/results.txt"; : > "$res"

# measure LABEL CMD... : wall seconds and max RSS (KiB) from /usr/bin/time.
measure() {
  local label="$1"; shift
  sync  # start every measurement with no dirty pages pending from the previous one
  if ! /usr/bin/time -f "%e %M" -o "$W/time.tmp" "$@" >/dev/null 2>"$W/err.tmp"; then
    cat "$W/err.tmp" >&2; exit 1
  fi
  echo "$label $(tail -n1 "$W/time.tmp")" >> "$res"
  echo "  $label: $(tail -n1 "$W/time.tmp") (s, KiB)" >&2
}
bytes_of() { du -cb "$@" | tail -n1 | cut -f1; }
dd_write() { # dd_write BYTES: write that many bytes to a file and fsync it, as our writer does
  local mib=$(( ($1 + 1048575) / 1048576 ))
  dd if=/dev/zero of="$W/dd.out" bs=1M count="$mib" conv=fsync status=none
}
export -f dd_write; export W

case "$what" in
convert)
  $T/warp-fixture --size "$size" --dtype bf16 --max-shard-size 2GB -o "$W/in" -q >/dev/null
  in_bytes=$(bytes_of "$W"/in/*.safetensors)
  cat "$W"/in/*.safetensors > /dev/null
  for r in $(seq "$reps"); do
    rm -rf "$W/f32" "$W/back" "$W/dd.out"
    measure floor-read-bf16 sh -c "cat $W/in/*.safetensors > /dev/null"
    measure floor-write-f32 bash -c "dd_write $((in_bytes * 2))"; rm -f "$W/dd.out"
    measure warp-convert-bf16-to-f32 $T/warp-convert "$W/in" -o "$W/f32" --dtype f32 -q
    measure floor-read-f32 sh -c "cat $W/f32/*.safetensors > /dev/null"
    measure floor-write-bf16 bash -c "dd_write $in_bytes"; rm -f "$W/dd.out"
    measure warp-convert-f32-to-bf16 $T/warp-convert "$W/f32" -o "$W/back" --dtype bf16 -q
  done
  echo "input: $(numfmt --to=iec "$in_bytes") bf16" >> "$res"
  ;;
slerp)
  $T/warp-fixture --size "$size" --dtype bf16 -o "$W/base" -q >/dev/null
  for k in 1 2 3; do
    $T/warp-fixture --size "$size" --dtype bf16 --base-seed 0 --seed "$k" -o "$W/p$k" -q >/dev/null
  done
  in_files=("$W"/base/*.safetensors "$W"/p1/*.safetensors "$W"/p2/*.safetensors "$W"/p3/*.safetensors)
  out_bytes=$(( $(bytes_of "$W"/base/*.safetensors) * 3 ))
  cat "${in_files[@]}" > /dev/null
  for r in $(seq "$reps"); do
    rm -rf "$W/out" "$W/dd.out"
    measure floor-read-inputs sh -c "cat ${in_files[*]} > /dev/null"
    measure floor-write-outputs bash -c "dd_write $out_bytes"; rm -f "$W/dd.out"
    measure warp-slerp-m3-3eta $T/warp-slerp "$W/p1" "$W/p2" "$W/p3" --init "$W/base" \
      --eta 0.3 --eta 0.5 --eta 1.0 -o "$W/out" -q
  done
  echo "inputs: 4 x $(numfmt --to=iec "$(bytes_of "$W"/base/*.safetensors)") bf16, outputs: 3" >> "$res"
  ;;
push)
  cargo build --release --quiet --example hub_server
  $T/warp-fixture --size "$size" --dtype bf16 --max-shard-size 1GB -o "$W/ck" -q >/dev/null
  for r in $(seq "$reps"); do
    # A fresh hub each time, so every run uploads everything.
    target/release/examples/hub_server 16 > "$W/url.txt" & server=$!
    for _ in $(seq 100); do [ -s "$W/url.txt" ] && break; sleep 0.1; done
    measure warp-push env HF_ENDPOINT="$(cat "$W/url.txt")" HF_TOKEN=hf_test_write_token \
      HF_HOME="$W/home" $T/warp push -q "$W/ck" "org/bench"
    kill "$server"; wait "$server" 2>/dev/null || true; : > "$W/url.txt"
  done
  echo "checkpoint: $(numfmt --to=iec "$(bytes_of "$W"/ck/*.safetensors)") in $(ls "$W"/ck/*.safetensors | wc -l) shards" >> "$res"
  ;;
budget)
  $T/warp-fixture --size "$size" --dtype bf16 -o "$W/base" -q >/dev/null
  for k in 1 2; do
    $T/warp-fixture --size "$size" --dtype bf16 --base-seed 0 --seed "$k" -o "$W/p$k" -q >/dev/null
  done
  cat "$W"/base/*.safetensors "$W"/p1/*.safetensors "$W"/p2/*.safetensors > /dev/null
  budgets=(1B 64KB 1MB 8MB 64MB default)
  for b in "${budgets[@]}"; do
    flag=(); [ "$b" = default ] || flag=(--memory-budget "$b")
    est=$($T/warp-slerp "$W/p1" "$W/p2" --init "$W/base" -o "$W/out" "${flag[@]}" --dry-run --json |
      python3 -c 'import json,sys; p=json.load(sys.stdin); print(p["process_bytes"], p["budget"], p["chunk_elems"])')
    echo "estimate-$b $est" >> "$res"
  done
  for r in $(seq "$reps"); do
    for b in "${budgets[@]}"; do
      rm -rf "$W/out"
      flag=(); [ "$b" = default ] || flag=(--memory-budget "$b")
      measure "warp-slerp-budget-$b" $T/warp-slerp "$W/p1" "$W/p2" --init "$W/base" -o "$W/out" \
        "${flag[@]}" -q
      if [ -n "${BASELINE_BIN:-}" ]; then
        rm -rf "$W/out"
        measure "warp-baseline-budget-$b" "$BASELINE_BIN" "$W/p1" "$W/p2" --init "$W/base" \
          -o "$W/out" "${flag[@]}" -q
      fi
    done
  done
  echo "inputs: 3 x $(numfmt --to=iec "$(bytes_of "$W"/base/*.safetensors)") bf16, output: 1" >> "$res"
  ;;
*) echo "unknown benchmark $what" >&2; exit 2 ;;
esac

python3 - "$res" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
notes = []
estimates = {}
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 3 and p[0].startswith(("floor", "warp")):
        rows[p[0]].append((float(p[1]), int(p[2])))
    elif len(p) == 4 and p[0].startswith("estimate-"):
        estimates[p[0][len("estimate-"):]] = [int(x) for x in p[1:]]
    else:
        notes.append(line.strip())
med = {k: (statistics.median(t for t, _ in v), max(m for _, m in v)) for k, v in rows.items()}
print("| run | median wall (s) | max RSS (MiB) | runs |\n|---|---|---|---|")
for k, (t, m) in med.items():
    print(f"| {k} | {t:.2f} | {m/1024:.0f} | {len(rows[k])} |")
def ratio(tool, *floor):
    if tool in med and all(f in med for f in floor):
        fl = sum(med[f][0] for f in floor)
        print(f"\n{tool}: {med[tool][0]:.2f} s vs floor {fl:.2f} s ({' + '.join(floor)}) "
              f"→ {med[tool][0]/fl:.2f}× floor, throughput {100*fl/med[tool][0]:.0f} % of floor")
ratio("warp-convert-bf16-to-f32", "floor-read-bf16", "floor-write-f32")
ratio("warp-convert-f32-to-bf16", "floor-read-f32", "floor-write-bf16")
ratio("warp-slerp-m3-3eta", "floor-read-inputs", "floor-write-outputs")
if estimates:
    base = any(k.startswith("warp-baseline-") for k in med)
    print("\n| --memory-budget | budget in force | chunk (elements) | --dry-run estimate (MiB) "
          "| peak RSS, max of runs (MiB) | median wall (s) |"
          + (" baseline peak RSS (MiB) | baseline median wall (s) |" if base else "")
          + "\n|---|---|---|---|---|---|" + ("---|---|" if base else ""))
    for b, (est, budget, chunk) in estimates.items():
        t, m = med.get(f"warp-slerp-budget-{b}", (float("nan"), 0))
        row = f"| {b} | {budget/2**20:.2f} MiB | {chunk} | {est/2**20:.1f} | {m/1024:.1f} | {t:.2f} |"
        if base:
            bt, bm = med.get(f"warp-baseline-budget-{b}", (float("nan"), 0))
            row += f" {bm/1024:.1f} | {bt:.2f} |"
        print(row)
for n in notes: print(n)
PY
