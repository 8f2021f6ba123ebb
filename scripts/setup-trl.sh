#!/usr/bin/env bash
# Sourced (`source scripts/setup-trl.sh`) before running the TRL backend of the RL stage
# (python/warp_align/trl_backend.py), tests/trl.rs or bench/rl_step.sh.
#
# Sources scripts/setup-torch.sh (the torch 2.11.0 / transformers 5.24.0 venv), then makes (once)
# and reuses a second venv holding TRL, accelerate and datasets at the versions pinned in
# scripts/requirements-trl.txt, in a cache keyed by those requirements and by the torch venv it
# builds on:
#     ${WARP_CACHE:-$HOME/.cache/warp}/trl-<key>/
# That venv sees the torch venv's packages through a .pth file (torch, transformers and numpy are
# not downloaded again), and every package of the torch venv is pinned as a constraint, so pip can
# neither upgrade nor duplicate them. Exports, besides what setup-torch.sh exports:
#     WARP_TRL_PYTHON   the Python that runs python/warp_align/trl_backend.py (import trl works)
#     WARP_TRL_VENV     that venv; its bin/ (with `accelerate`) is put first on PATH
# Must be sourced from bash; does not change the caller's shell options.

_warp_trl_setup() {
  local root req site key venv vsite
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  # shellcheck source=scripts/setup-torch.sh
  source "$root/scripts/setup-torch.sh" || return 1
  req="$root/scripts/requirements-trl.txt"
  site="$("$WARP_TORCH_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    || { echo "setup-trl: $WARP_TORCH_PYTHON does not run" >&2; return 1; }
  key="$( (grep -v '^#' "$req"; echo "$site") | sha256sum | cut -c1-12)"
  venv="${WARP_CACHE:-$HOME/.cache/warp}/trl-$key"
  if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    echo "setup-trl: installing scripts/requirements-trl.txt into $venv (once)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" || return 1
    vsite="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
      || return 1
    echo "$site" > "$vsite/_warp_torch_venv.pth"
    "$WARP_TORCH_PYTHON" -m pip freeze --disable-pip-version-check > "$venv/constraints.txt" \
      || return 1
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      -r "$req" -c "$venv/constraints.txt" || {
        echo "setup-trl: pip install failed; nothing exported" >&2
        return 1
      }
    "$venv/bin/python" -c 'import trl, accelerate, datasets, torch' || {
      echo "setup-trl: the new venv cannot import trl/accelerate/datasets/torch" >&2
      return 1
    }
    touch "$venv/.complete"
  fi
  export WARP_TRL_VENV="$venv"
  export WARP_TRL_PYTHON="$venv/bin/python"
  case ":$PATH:" in *":$venv/bin:"*) ;; *) export PATH="$venv/bin:$PATH" ;; esac
  echo "setup-trl: $(grep -v '^#' "$req" | tr '\n' ' ')from $venv" >&2
}
# `return` when sourced; a plain `bash scripts/setup-trl.sh` just fills the cache.
if _warp_trl_setup; then
  unset -f _warp_trl_setup
  return 0 2>/dev/null || exit 0
else
  unset -f _warp_trl_setup
  return 1 2>/dev/null || exit 1
fi
