#!/usr/bin/env bash
# Builds, on a machine with Rust (no GPU or CUDA toolkit needed), everything that
# scripts/gpu-check.sh runs on a GPU machine that has no Rust toolchain:
#   - the release binaries with the CUDA backend (cargo build --release --features cuda --bins):
#     warp-fixture, warp-slerp, warp-inspect;
#   - the CUDA test executable (cargo test --release --features cuda --test it --no-run: the one
#     integration-test crate, whose cuda:: module gpu-check.sh runs), found from cargo's JSON
#     messages;
#   - warp-rl (cargo build --release --features rl: libtorch from scripts/setup-torch.sh's
#     torch 2.11.0+cu130; on the GPU machine it runs on that machine's PyTorch 2.11 libraries)
#     and the RL section's scripts (scripts/gpu-check-rl.sh, bench/{rl_model,rl_reward,
#     trl_scale}.py);
#   - with WARP_BUNDLE_WHEELS=1, wheels/: the wheels of the packages that scripts/setup-trl.sh's
#     venv adds to the torch venv (TRL, accelerate, datasets and their dependencies), pinned to
#     the versions installed here (pip download, no dependencies resolved), for a GPU machine
#     without TRL;
#   - scripts/gpu-check.sh itself and a MANIFEST.
# Debug info is stripped so the bundle stays small (~20 MB). The binaries need glibc >= 2.34 on
# the GPU machine (Ubuntu 22.04 or newer), and they load libcuda/libnvrtc at run time.
#
# Usage: scripts/gpu-bundle.sh [DEST]        (default DEST: target-gpu-bundle, git-ignored)
# Then, on the GPU machine, from the repository root: bash DEST/gpu-check.sh DEST
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${1:-target-gpu-bundle}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
bins=(warp-fixture warp-slerp warp-inspect)

echo "gpu-bundle: building release binaries with --features cuda (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
cargo build --release --features cuda --bins

echo "gpu-bundle: building the CUDA test executable" >&2
test_exe=$(cargo test --release --features cuda --test it --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if (m.get("reason") == "compiler-artifact" and m.get("executable")
            and m["target"]["name"] == "it" and m["profile"]["test"]):
        print(m["executable"])
')
if [ -z "$test_exe" ] || [ ! -x "$test_exe" ]; then
    echo "gpu-bundle: FAIL: could not find the cuda test executable in cargo's output" >&2
    exit 1
fi

echo "gpu-bundle: building warp-rl (--features rl)" >&2
# shellcheck source=scripts/setup-torch.sh
source scripts/setup-torch.sh
cargo build --release --features rl --bin warp-rl

rm -rf "$dest"
mkdir -p "$dest/bench"
for b in "${bins[@]}" warp-rl; do
    strip --strip-debug -o "$dest/$b" "$CARGO_TARGET_DIR/release/$b"
done
cp scripts/gpu-check-rl.sh python/warp_align/trl_backend.py python/accelerate/zero3.yaml "$dest/"
cp bench/rl_model.py bench/rl_reward.py bench/trl_scale.py "$dest/bench/"
if [ "${WARP_BUNDLE_WHEELS:-0}" = 1 ]; then
    # shellcheck source=scripts/setup-trl.sh
    source scripts/setup-trl.sh
    comm -13 <("$WARP_TORCH_PYTHON" -m pip freeze --disable-pip-version-check | sort) \
        <("$WARP_TRL_PYTHON" -m pip freeze --disable-pip-version-check | sort) >"$dest/wheels.txt"
    "$WARP_TRL_PYTHON" -m pip download --disable-pip-version-check --quiet --no-deps \
        --only-binary=:all: -d "$dest/wheels" -r "$dest/wheels.txt"
fi
strip --strip-debug -o "$dest/cuda-tests" "$test_exe"
cp scripts/gpu-check.sh "$dest/gpu-check.sh"
chmod +x "$dest"/gpu-check.sh "$dest"/cuda-tests "$dest"/warp-*
{
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "rustc: $(rustc --version)"
    echo "glibc needed: $(objdump -T "$dest/warp-slerp" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)"
    echo "test executable: $test_exe"
} >"$dest/MANIFEST"
cat "$dest/MANIFEST" >&2
du -sh "$dest" >&2
echo "gpu-bundle: ready in $dest (run on the GPU machine: bash $dest/gpu-check.sh $dest)" >&2
