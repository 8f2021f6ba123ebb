#!/usr/bin/env bash
# Sourced (`source scripts/setup-torch.sh`) before building or testing with `--features rl`.
#
# Makes (once) and reuses a Python venv holding the pinned PyTorch and the `transformers`
# reference, in a cache keyed by the versions below:
#     ${WARP_CACHE:-$HOME/.cache/warp}/torch-2.11.0-<key>/
# and exports what tch's build (torch-sys) and the RL tests need:
#     LIBTORCH_USE_PYTORCH=1   torch-sys takes libtorch from the torch package of the `python`
#                              found on PATH, so (like `activate`) VIRTUAL_ENV is set and the
#                              venv's bin/ is put first on PATH
#     WARP_TORCH_PYTHON        the Python tests/it/rl_model.rs runs tests/ref/hf_logits.py with
#     WARP_TORCH_LIB           torch's lib dir (build.rs links binaries with an rpath to it)
# The binaries need no LD_LIBRARY_PATH afterwards: build.rs puts torch's lib dir in their rpath.
#
# tch 0.24.0 is built against libtorch 2.11.0: change WARP_TORCH_VERSION only together with tch.
# The PyPI wheel of torch 2.11.0 for Linux x86_64 is the CUDA build; it pulls the nvidia-* wheels
# (several GB, downloaded once into the cache). On a machine without a GPU it runs on the CPU.
# Must be sourced from bash; does not change the caller's shell options.

_warp_torch_setup() {
  local torch_ver tf_ver np_ver key venv py
  torch_ver="${WARP_TORCH_VERSION:-2.11.0}"
  tf_ver="5.24.0"
  np_ver="2.4.6"
  key="$( (python3 --version; echo "torch==$torch_ver transformers==$tf_ver numpy==$np_ver") \
          | sha256sum | cut -c1-12)"
  venv="${WARP_CACHE:-$HOME/.cache/warp}/torch-$torch_ver-$key"
  py="$venv/bin/python"
  if [ ! -x "$py" ] || [ ! -f "$venv/.complete" ]; then
    echo "setup-torch: installing torch==$torch_ver, transformers==$tf_ver into $venv (once)" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")" || return 1
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "torch==$torch_ver" "transformers==$tf_ver" "numpy==$np_ver" || {
        echo "setup-torch: pip install failed; nothing exported" >&2
        return 1
      }
    touch "$venv/.complete"
  fi
  local lib
  lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" \
    || { echo "setup-torch: $py cannot import torch" >&2; return 1; }
  export LIBTORCH_USE_PYTORCH=1
  export VIRTUAL_ENV="$venv"
  case ":$PATH:" in *":$venv/bin:"*) ;; *) export PATH="$venv/bin:$PATH" ;; esac
  export WARP_TORCH_PYTHON="$py"
  export WARP_TORCH_LIB="$lib"
  echo "setup-torch: torch $torch_ver from $venv (lib: $lib)" >&2
}
# `return` when sourced; a plain `bash scripts/setup-torch.sh` just fills the cache.
if _warp_torch_setup; then
  unset -f _warp_torch_setup
  return 0 2>/dev/null || exit 0
else
  unset -f _warp_torch_setup
  return 1 2>/dev/null || exit 1
fi
