#!/usr/bin/env bash
# The GPU check of the CUDA backend, in one call, on a GPU machine WITHOUT Rust or network.
# It runs prebuilt binaries from a bundle folder made by scripts/gpu-bundle.sh (see
# docs/CUDA.md), in about 3-5 minutes:
#   1. the CUDA test executable: CUDA vs CPU backends, identical Gram partials and output bytes
#      for every dtype, M = 2 and 3, LITI coefficient rows (a skip counts as a FAIL here);
#   2. bandwidths on in-memory data: pinned H2D alone, the CPU and CUDA combine;
#   3. synthetic checkpoints (warp-fixture): a bf16 base + 3 fine-tunes, an f32 base + 3;
#   4. warp-slerp M = 2 and M = 3 with several --eta, on --device cpu and --device cuda:
#      outputs (all files) and --report JSONs compared byte for byte; merge throughput printed.
#   5. RL (the bundle's warp-rl, libtorch from the machine's PyTorch): warp-rl --dtype bf16 steps
#      on a ~0.5B Qwen2-shaped random model (made here by transformers from a config: Qwen2.5-0.5B's
#      shape, 494M parameters) next to TRL's RLOOTrainer (bench/trl_scale.py, bf16 autocast) on
#      the same GPU, same prompts, reward program and settings: samples/s, generation tokens/s,
#      peak GPU memory (nvidia-smi, polled, for both; TRL's max_memory_allocated too); then the
#      TRL backend's start-up check that its reference model (the EMA) is f32, one bf16 step under
#      plain accelerate and under ZeRO-3 with mixed_precision bf16 (when DeepSpeed is installed).
# Prints PASS:/FAIL: lines and exits non-zero on any FAIL. With $OUT set, writes
# $OUT/gpu-check.txt (the summary) and $OUT/gpu-check.log (everything).
#
# Usage: bash BUNDLE/gpu-check.sh [BUNDLE]     (BUNDLE defaults to this script's folder)
# Knobs: WARP_GPU_SIZE (bf16 model size, default 2GB), WARP_GPU_F32_SIZE (default 1GB),
#        WARP_GPU_WORK (scratch folder, default /tmp/warp-gpu-check; needs ~25 GB free),
#        WARP_BENCH_MB (per-input size of the in-memory bench, default 512),
#        WARP_GPU_DEVICE (the device compared with the CPU, default cuda; "cpu" dry-runs the
#        script's own logic on a machine without a GPU),
#        WARP_GPU_PARTS (default "merge rl": which of sections 1-4 (merge) and 5 (rl) run),
#        WARP_GPU_PYTHON (Python with torch 2.11 + transformers, default python3; TRL from it, or
#        from the bundle's wheels/ when it lacks TRL), WARP_GPU_RL_MODEL (transformers shape
#        arguments of bench/rl_model.py, default Qwen2.5-0.5B's), WARP_GPU_RL_STEPS (default 4,
#        the first left out of the medians), WARP_GPU_RL_ARGS (batch/n/tokens, both trainers).
set -euo pipefail

bundle=$(cd "${1:-$(dirname "$0")}" && pwd)
work=${WARP_GPU_WORK:-/tmp/warp-gpu-check}
size=${WARP_GPU_SIZE:-2GB}
device=${WARP_GPU_DEVICE:-cuda}
f32size=${WARP_GPU_F32_SIZE:-1GB}
out_dir=${OUT:-$work}
mkdir -p "$out_dir" "$work"
results="$out_dir/gpu-check.txt"
log="$out_dir/gpu-check.log"
: >"$results"
: >"$log"
t_start=$(date +%s.%N)
passes=0
fails=0

say() { echo "$*" | tee -a "$results"; }
pass() { passes=$((passes + 1)); say "PASS: $*"; }
fail() { fails=$((fails + 1)); say "FAIL: $*"; }
now() { date +%s.%N; }
# secs START END
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# gbps BYTES SECONDS
gbps() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.2f", (s > 0 ? n / s / 1e9 : 0) }'; }
# Total size of the .safetensors files of the given model folders.
model_bytes() {
    local total=0 f
    for d in "$@"; do
        for f in "$d"/*.safetensors; do
            total=$((total + $(stat -c %s "$f")))
        done
    done
    echo "$total"
}
finish() {
    local rc=$?
    say "elapsed: $(secs "$t_start" "$(now)") s"
    say "summary: $passes passed, $fails failed"
    if [ "$rc" -ne 0 ] && [ "$fails" -eq 0 ]; then
        say "FAIL: the script stopped early (exit $rc); see $log"
    fi
}
trap finish EXIT

say "== warp gpu-check: bundle $bundle, work $work, results $results"
[ -f "$bundle/MANIFEST" ] && sed 's/^/manifest: /' "$bundle/MANIFEST" | tee -a "$results"

# ---- 0. environment -----------------------------------------------------------------------
parts=${WARP_GPU_PARTS:-merge rl}
has_part() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
need=()
has_part merge && need+=(cuda-tests warp-fixture warp-slerp)
has_part rl && need+=(warp-rl gpu-check-rl.sh bench/rl_model.py bench/rl_reward.py bench/trl_scale.py
    trl_backend.py zero3.yaml)
for b in "${need[@]}"; do
    if [ ! -e "$bundle/$b" ]; then
        fail "missing $bundle/$b (build the bundle with scripts/gpu-bundle.sh)"
        exit 1
    fi
done
say "glibc: $(ldd --version 2>&1 | head -1)"
if gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1); then
    say "gpu: $gpu"
else
    fail "nvidia-smi: $gpu"
fi
# NVRTC: the backend also looks in CUDA_HOME and /usr/local/cuda*, but a pip wheel (PyTorch's
# nvidia-cuda-nvrtc) is found only through LD_LIBRARY_PATH.
nvrtc_dir=""
ldp=${LD_LIBRARY_PATH:-}
for d in ${ldp//:/ } ${CUDA_HOME:+$CUDA_HOME/lib64} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    /usr/local/cuda-*/lib64 $(python3 -c '
import glob, site, sys
paths = site.getsitepackages() + [site.getusersitepackages()]
for p in paths:
    for d in sorted(glob.glob(p + "/nvidia/*/lib")) + sorted(glob.glob(p + "/nvidia/cuda_nvrtc/lib")):
        print(d)
' 2>/dev/null || true); do
    if compgen -G "$d/libnvrtc.so.*" >/dev/null; then
        nvrtc_dir=$d
        break
    fi
done
if [ -n "$nvrtc_dir" ]; then
    case ":${LD_LIBRARY_PATH:-}:" in
    *":$nvrtc_dir:"*) ;;
    *) export LD_LIBRARY_PATH="$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
    say "nvrtc: $(ls "$nvrtc_dir"/libnvrtc.so.* | head -3 | tr '\n' ' ')"
else
    say "nvrtc: no libnvrtc.so.* found in the usual places (the backend will say so)"
fi
if ! has_part merge; then
    : # warp-rl needs the machine's libtorch: section 5 checks it
elif "$bundle/warp-slerp" --version >>"$log" 2>&1; then
    pass "bundle binaries start ($("$bundle/warp-slerp" --version))"
else
    fail "bundle binaries do not start here (glibc too old? see $log)"
    exit 1
fi

if has_part merge; then
# ---- 1. the CUDA test executable --------------------------------------------------------------
say "== 1. tests: CUDA backend vs CPU backend"
t0=$(now)
if "$bundle/cuda-tests" cuda:: >"$work/tests.out" 2>&1; then
    tests_ok=1
else
    tests_ok=0
fi
cat "$work/tests.out" >>"$log"
grep -E '^test |test result|^skipped|^using|^NVRTC' "$work/tests.out" | tee -a "$results" || true
if [ "$tests_ok" -eq 1 ] && ! grep -q 'skipped: no CUDA device' "$work/tests.out"; then
    pass "cuda tests ($(secs "$t0" "$(now)") s)"
elif [ "$tests_ok" -eq 1 ]; then
    fail "cuda tests skipped the device: $(grep -m1 'skipped: no CUDA device' "$work/tests.out")"
else
    fail "cuda tests (see $log)"
    grep -E 'panicked|assert|left|right' "$work/tests.out" | head -20 | tee -a "$results" || true
fi

# ---- 2. in-memory bandwidths ------------------------------------------------------------------
say "== 2. bandwidths (in memory)"
if "$bundle/cuda-tests" --ignored bench_h2d_and_combine --nocapture >"$work/bench.out" 2>&1 &&
    grep -q '^BENCH h2d_pinned_GBps' "$work/bench.out"; then
    grep -E '^BENCH' "$work/bench.out" | tee -a "$results" || true
    pass "bench"
else
    grep -E '^skipped' "$work/bench.out" | tee -a "$results" || true
    cat "$work/bench.out" >>"$log"
    fail "bench (see $log)"
fi
cat "$work/bench.out" >>"$log"

# ---- 3. synthetic checkpoints -----------------------------------------------------------------
say "== 3. fixtures: bf16 $size x 4, f32 $f32size x 4"
t0=$(now)
fixtures_ok=1
make_set() { # DIR DTYPE SIZE
    local dir=$1 dt=$2 sz=$3 k
    rm -rf "$dir"
    mkdir -p "$dir"
    "$bundle/warp-fixture" --size "$sz" --dtype "$dt" --seed 0 -o "$dir/base" -q >>"$log" 2>&1 &&
        for k in 1 2 3; do
            "$bundle/warp-fixture" --size "$sz" --dtype "$dt" --base-seed 0 --seed "$k" \
                -o "$dir/ft$k" -q >>"$log" 2>&1 || return 1
        done
}
if make_set "$work/bf16" bf16 "$size" && make_set "$work/f32" f32 "$f32size"; then
    pass "fixtures ($(secs "$t0" "$(now)") s; bf16 $(model_bytes "$work/bf16/base") B, f32 $(model_bytes "$work/f32/base") B per model)"
else
    fail "fixtures (see $log)"
    fixtures_ok=0
fi

# ---- 4. merges, CPU vs CUDA ---------------------------------------------------------------------
# merge LABEL SET "MODELS" [warp-slerp options...]
merge() {
    local label=$1 set=$2 models=$3
    shift 3
    local a="$work/out-cpu" b="$work/out-cuda" m ins=("$work/$set/base")
    local args=()
    for m in $models; do
        args+=("$work/$set/$m")
        ins+=("$work/$set/$m")
    done
    args+=(--init "$work/$set/base" "$@")
    rm -rf "$a" "$b" "$work/rep-cpu.json" "$work/rep-cuda.json"
    for m in "${ins[@]}"; do # the same (warm) page cache for both runs
        cat "$m"/*.safetensors >/dev/null
    done
    local bytes t0 t1 t2 ok=1
    bytes=$(model_bytes "${ins[@]}")
    t0=$(now)
    "$bundle/warp-slerp" "${args[@]}" -o "$a" --device cpu --report "$work/rep-cpu.json" \
        >"$work/cpu.out" 2>&1 || ok=0
    t1=$(now)
    "$bundle/warp-slerp" "${args[@]}" -o "$b" --report "$work/rep-cuda.json" \
        --device "$device" >"$work/cuda.out" 2>&1 || ok=0
    t2=$(now)
    {
        echo "--- $label: cpu"
        cat "$work/cpu.out"
        echo "--- $label: cuda"
        cat "$work/cuda.out"
    } >>"$log"
    local tc tg
    tc=$(secs "$t0" "$t1")
    tg=$(secs "$t1" "$t2")
    say "$label: cpu $tc s ($(gbps "$bytes" "$tc") GB/s of input), $device $tg s ($(gbps "$bytes" "$tg") GB/s of input)"
    say "   cpu:  $(grep -m1 -E ' on ' "$work/cpu.out" | sed 's/.* on //')"
    say "   $device: $(grep -m1 -E ' on ' "$work/cuda.out" | sed 's/.* on //')"
    if [ "$ok" -ne 1 ]; then
        fail "$label: a merge failed (see $log)"
        tail -n 2 "$work/cpu.out" "$work/cuda.out" | tee -a "$results" || true
    elif [ "$device" = cuda ] && ! grep -q ' on cuda:' "$work/cuda.out"; then
        fail "$label: --device cuda did not run on the GPU"
    elif grep -q 'finishing on the CPU' "$work/cuda.out"; then
        fail "$label: the CUDA backend hit a device error and fell back to the CPU"
    elif diff -r -q "$a" "$b" >>"$log" 2>&1 && cmp -s "$work/rep-cpu.json" "$work/rep-cuda.json"; then
        pass "$label: outputs and report byte-identical ($(find "$a" -type f | wc -l) files)"
    else
        fail "$label: outputs differ between cpu and $device"
        diff -r -q "$a" "$b" 2>&1 | head -5 | tee -a "$results" || true
    fi
    rm -rf "$a" "$b"
}
if [ "$fixtures_ok" -eq 1 ]; then
    say "== 4. merges (warp-slerp), cpu vs $device"
    merge "bf16 M=2 eta 0,0.3,1" bf16 "ft1 ft2" --eta 0 --eta 0.3 --eta 1
    merge "bf16 M=3 eta 0.3,1 angle=layer" bf16 "ft1 ft2 ft3" --eta 0.3 --eta 1 --angle layer
    merge "f32 M=2 eta 0.3,1" f32 "ft1 ft2" --eta 0.3 --eta 1
    merge "f32 M=3 -> bf16" f32 "ft1 ft2 ft3" --dtype bf16
fi
rm -rf "$work/bf16" "$work/f32"
fi # merge

if has_part rl; then
    # shellcheck source=scripts/gpu-check-rl.sh
    source "$bundle/gpu-check-rl.sh"
fi
[ "$fails" -eq 0 ]
