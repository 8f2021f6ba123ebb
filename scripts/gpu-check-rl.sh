# Section 5 of scripts/gpu-check.sh, sourced by it (its say/pass/fail/now/secs, $bundle, $work,
# $device, $log): warp-rl --dtype bf16 next to TRL's RLOOTrainer on one ~0.5B Qwen2-shaped random
# model, on the same GPU, with the same prompts, reward program and settings.
#
# The bundle's warp-rl was linked against PyPI's torch 2.11.0+cu130 (scripts/setup-torch.sh); here
# it runs on the machine's own PyTorch 2.11 libraries (LD_LIBRARY_PATH: torch/lib and the NVIDIA
# wheels' lib folders), which must be the same version (libtorch has no stable C++ ABI).
say "== 5. RL: warp-rl --dtype bf16 vs TRL RLOOTrainer on $device"
rl_py=${WARP_GPU_PYTHON:-python3}
# Qwen2.5-0.5B's shape (494M parameters with the tied head), random weights.
rl_shape=${WARP_GPU_RL_MODEL:---hidden 896 --layers 24 --heads 14 --kv-heads 2 --intermediate 4864 --vocab 151936 --tied}
rl_steps=${WARP_GPU_RL_STEPS:-4}
read -r -a rl_set <<<"${WARP_GPU_RL_ARGS:---batch 16 -n 4 --max-new-tokens 128}"
rl_micro=${WARP_GPU_RL_MICRO:-64}
rl_dir="$work/rl"
rl_ok=1

# rl_peak_gpu PID FILE: polls nvidia-smi while PID lives; writes the largest memory (MiB) the GPU
# reported for PID (CUDA context, caching allocator's reserve and tensors) as "N MiB", or "n/a".
rl_peak_gpu() {
    local pid=$1 file=$2
    if ! command -v nvidia-smi >/dev/null; then
        echo n/a >"$file"
        return
    fi
    while kill -0 "$pid" 2>/dev/null; do
        nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null
        sleep 0.5
    done | awk -F', *' -v p="$pid" '$1 + 0 == p && $2 + 0 > m { m = $2 + 0 } END { print (m ? m " MiB" : "n/a") }' >"$file"
}

# rl_median FILE KEY: the median of KEY over metrics.jsonl lines after the first.
rl_median() {
    "$rl_py" - "$1" "$2" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][1:]
v = [r[sys.argv[2]] for r in rows if r.get(sys.argv[2]) is not None]
print(f"{statistics.median(v):.2f}" if v else "n/a")
EOF
}

if ! torch_info=$("$rl_py" -c '
import glob, os, torch, transformers
lib = os.path.join(os.path.dirname(torch.__file__), "lib")
site = os.path.dirname(os.path.dirname(torch.__file__))
nv = sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib")))
print(torch.__version__, transformers.__version__, ":".join([lib] + nv))' 2>>"$log"); then
    fail "RL: $rl_py lacks torch or transformers (set WARP_GPU_PYTHON)"
    rl_ok=0
else
    read -r rl_torch rl_tf rl_libs <<<"$torch_info"
    say "RL: torch $rl_torch, transformers $rl_tf ($rl_py)"
    case "$rl_torch" in
    2.11.*) ;;
    *)
        fail "RL: torch $rl_torch here, the bundle's warp-rl needs 2.11"
        rl_ok=0
        ;;
    esac
fi
if [ "$rl_ok" -eq 1 ] && [ ! -x "$bundle/warp-rl" ]; then
    fail "RL: missing $bundle/warp-rl (scripts/gpu-bundle.sh builds it)"
    rl_ok=0
fi

if [ "$rl_ok" -eq 1 ]; then
    t0=$(now)
    rm -rf "$rl_dir"
    # shellcheck disable=SC2086 # the shape is a list of arguments
    if "$rl_py" "$bundle/bench/rl_model.py" -o "$rl_dir" $rl_shape --dtype bf16 --max-positions 512 \
        >"$work/rl-model.json" 2>>"$log"; then
        say "RL: model $(cat "$work/rl-model.json") ($(secs "$t0" "$(now)") s)"
    else
        fail "RL: making the model (see $log)"
        rl_ok=0
    fi
fi

if [ "$rl_ok" -eq 1 ]; then
    reward="$rl_py $bundle/bench/rl_reward.py"
    common=(--steps "$rl_steps" "${rl_set[@]}" --micro-batch "$rl_micro" --lr 1e-5)
    # warp-rl: bf16 compute, f32 masters, Adam and EMA.
    t0=$(now)
    LD_LIBRARY_PATH="$rl_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$bundle/warp-rl" \
        "$rl_dir/model" --prompts "$rl_dir/prompts.jsonl" -o "$rl_dir/warp-run" \
        --reward "cmd:$reward" --dtype bf16 --device "$device" --save-every 1000000 \
        "${common[@]}" -q >>"$log" 2>"$work/warp-rl.err" &
    pid=$!
    rl_peak_gpu "$pid" "$work/warp-rl.gpu" &
    poller=$!
    if wait "$pid"; then
        wait "$poller" || true
        m="$rl_dir/warp-run/metrics.jsonl"
        say "RL: warp-rl bf16: $(rl_median "$m" samples_per_s) samples/s, $(rl_median "$m" gen_tokens_per_s) generation tokens/s (medians after step 1), peak GPU memory $(cat "$work/warp-rl.gpu"), $(secs "$t0" "$(now)") s in all"
        pass "RL: warp-rl --dtype bf16 ($rl_steps steps)"
        warp_sps=$(rl_median "$m" samples_per_s)
    else
        wait "$poller" || true
        cat "$work/warp-rl.err" >>"$log"
        fail "RL: warp-rl: $(tail -n 1 "$work/warp-rl.err")"
        warp_sps=n/a
    fi
    rm -rf "$rl_dir/warp-run"

    # TRL: from the machine's Python, or installed from the bundle's wheels into a venv on top.
    trl_py=$rl_py
    if ! "$trl_py" -c 'import trl, accelerate, datasets' 2>/dev/null && [ -d "$bundle/wheels" ]; then
        "$rl_py" -m venv --system-site-packages "$work/trl-venv" >>"$log" 2>&1 &&
            "$work/trl-venv/bin/pip" install --quiet --no-index --find-links "$bundle/wheels" \
                trl accelerate datasets >>"$log" 2>&1 && trl_py="$work/trl-venv/bin/python"
    fi
    if ! trl_v=$("$trl_py" -c 'import trl, accelerate, datasets; print(trl.__version__)' 2>>"$log"); then
        fail "RL: no TRL here (install trl, accelerate and datasets, or bundle wheels/)"
    else
        bf16=()
        [ "$device" = cuda ] && bf16=(--bf16)
        t0=$(now)
        "$trl_py" "$bundle/bench/trl_scale.py" "$rl_dir/model" --prompts "$rl_dir/prompts.jsonl" \
            --reward "$reward" --skip 1 --device "$([ "$device" = cuda ] && echo cuda || echo cpu)" \
            "${bf16[@]}" "${common[@]}" >"$work/trl.out" 2>"$work/trl.err" &
        pid=$!
        rl_peak_gpu "$pid" "$work/trl.gpu" &
        poller=$!
        if wait "$pid"; then
            wait "$poller" || true
            trl_line=$("$rl_py" - "$work/trl.out" <<'EOF'
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
alloc = d["peak_gpu_bytes"]
tps = d["generate_tokens_per_s"]
print(f'{d["median_samples_per_s"]:.2f} samples/s, '
      f'{"n/a" if tps is None else f"{tps:.2f}"} generation tokens/s (at most: every sequence '
      f'counted at full length), max_memory_allocated '
      f'{"n/a" if alloc is None else f"{alloc / 2**20:.0f} MiB"}')
EOF
)
            say "RL: TRL $trl_v RLOOTrainer (bf16 autocast): $trl_line, peak GPU memory $(cat "$work/trl.gpu"), $(secs "$t0" "$(now)") s in all"
            trl_sps=$("$rl_py" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["median_samples_per_s"])' "$work/trl.out")
            pass "RL: TRL RLOOTrainer ($rl_steps steps)"
            if [ "$warp_sps" != n/a ]; then
                say "RL: warp-rl / TRL samples/s: $(awk -v a="$warp_sps" -v b="$trl_sps" 'BEGIN { printf "%.2f", a / b }')"
            fi
        else
            wait "$poller" || true
            cat "$work/trl.err" >>"$log"
            fail "RL: TRL: $(tail -n 1 "$work/trl.err")"
        fi
    fi
fi
# 5b. The TRL backend keeps its reference model (WARP's EMA) in f32 under bf16 training: its
# start-up check (check_reference_f32 in trl_backend.py) refuses to train otherwise. One step with
# dtype bf16 (TrainingArguments bf16=True) under plain accelerate, then under DeepSpeed ZeRO-3 with
# mixed_precision bf16 when DeepSpeed is installed. PASS: the run completes (reference f32) or is
# refused by the check with its one-line message; FAIL: any other outcome.
if [ "$rl_ok" -eq 1 ] && [ -n "${trl_v:-}" ]; then
    if ! LD_LIBRARY_PATH="$rl_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$bundle/warp-rl" \
        --print-schema >"$work/rl-schema.json" 2>>"$log"; then
        fail "RL: warp-rl --print-schema (see $log)"
    else
        "$rl_py" - "$work/trl-f32.json" "$rl_dir" "cmd:$reward" "$device" <<'EOF'
import json, sys
out, d, reward, device = sys.argv[1:]
json.dump({"model": f"{d}/model", "prompts": f"{d}/prompts.jsonl", "reward": reward,
           "steps": 1, "batch": 2, "n": 2, "max_new_tokens": 16, "dtype": "bf16",
           "device": device, "backend": "trl", "save_every": 1}, open(out, "w"))
EOF
        sed -e "s/^mixed_precision: .*/mixed_precision: bf16/" -e "s/^num_processes: .*/num_processes: 1/" \
            "$bundle/zero3.yaml" >"$work/zero3-bf16.yaml"
        for mode in accelerate zero3; do
            launch=("$trl_py" "$bundle/trl_backend.py")
            if [ "$mode" = zero3 ]; then
                if ! "$trl_py" -c 'import deepspeed' 2>/dev/null; then
                    say "RL: TRL reference dtype under ZeRO-3: skipped (no deepspeed here)"
                    continue
                fi
                launch=("$trl_py" -m accelerate.commands.launch --config_file "$work/zero3-bf16.yaml"
                    "$bundle/trl_backend.py")
            fi
            rm -rf "$rl_dir/trl-$mode"
            if WARP_RL_SCHEMA=$(cat "$work/rl-schema.json") "${launch[@]}" train "$work/trl-f32.json" \
                -o "$rl_dir/trl-$mode" -q >>"$log" 2>"$work/trl-$mode.err"; then
                pass "RL: TRL backend, bf16 under $mode: reference model (EMA) f32, one step done"
            elif grep -q "reference model (the EMA) holds" "$work/trl-$mode.err"; then
                pass "RL: TRL backend, bf16 under $mode: refused at start ($(tail -n 1 "$work/trl-$mode.err"))"
            else
                cat "$work/trl-$mode.err" >>"$log"
                fail "RL: TRL backend, bf16 under $mode: $(tail -n 1 "$work/trl-$mode.err")"
            fi
        done
    fi
fi
rm -rf "$rl_dir" "$work/trl-venv"
