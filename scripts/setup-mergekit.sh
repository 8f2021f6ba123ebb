#!/usr/bin/env bash
# Sourced (`source scripts/setup-mergekit.sh`) before the tests that compare `warp merge` with
# mergekit (tests/it/merge_recipe.rs) or bench/merge_recipe.sh.
#
# Sources scripts/setup-torch.sh (the torch 2.11.0 / transformers 5.24.0 venv), then makes (once)
# and reuses a second venv holding mergekit at the version pinned in
# scripts/requirements-mergekit.txt, in a cache keyed by those requirements and by the torch venv
# it builds on:
#     ${WARP_CACHE:-$HOME/.cache/warp}/mergekit-<key>/
# That venv sees the torch venv's packages through a .pth file (torch, transformers and numpy are
# not downloaded again), and every package of the torch venv is pinned as a constraint, so pip can
# neither upgrade nor duplicate them. Exports, besides what setup-torch.sh exports:
#     WARP_MERGEKIT_PYTHON   the Python that runs tests/ref/mergekit_ref.py (import mergekit works)
#     WARP_MERGEKIT_VENV     that venv; its bin/ (with `mergekit-yaml`) is put first on PATH
# Must be sourced from bash; does not change the caller's shell options.

_warp_mergekit_setup() {
  local root req site key venv vsite
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  # shellcheck source=scripts/setup-torch.sh
  source "$root/scripts/setup-torch.sh" || return 1
  req="$root/scripts/requirements-mergekit.txt"
  site="$("$WARP_TORCH_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    || { echo "setup-mergekit: $WARP_TORCH_PYTHON does not run" >&2; return 1; }
  key="$( (grep -v '^#' "$req"; echo "$site") | sha256sum | cut -c1-12)"
  venv="${WARP_CACHE:-$HOME/.cache/warp}/mergekit-$key"
  if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    echo "setup-mergekit: installing scripts/requirements-mergekit.txt into $venv (once)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" || return 1
    vsite="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
      || return 1
    echo "$site" > "$vsite/_warp_torch_venv.pth"
    "$WARP_TORCH_PYTHON" -m pip freeze --disable-pip-version-check > "$venv/constraints.txt" \
      || return 1
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      -r "$req" -c "$venv/constraints.txt" || {
        echo "setup-mergekit: pip install failed; nothing exported" >&2
        return 1
      }
    "$venv/bin/python" -c 'import mergekit, mergekit.merge, torch' || {
      echo "setup-mergekit: the new venv cannot import mergekit/torch" >&2
      return 1
    }
    touch "$venv/.complete"
  fi
  export WARP_MERGEKIT_VENV="$venv"
  export WARP_MERGEKIT_PYTHON="$venv/bin/python"
  case ":$PATH:" in *":$venv/bin:"*) ;; *) export PATH="$venv/bin:$PATH" ;; esac
  echo "setup-mergekit: $(grep -v '^#' "$req" | tr '\n' ' ')from $venv" >&2
}
# `return` when sourced; a plain `bash scripts/setup-mergekit.sh` just fills the cache.
if _warp_mergekit_setup; then
  unset -f _warp_mergekit_setup
  return 0 2>/dev/null || exit 0
else
  unset -f _warp_mergekit_setup
  return 1 2>/dev/null || exit 1
fi
