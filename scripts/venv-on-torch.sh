#!/usr/bin/env bash
# Sourced by the setup scripts of the Python reference packages (setup-trl.sh, setup-mergekit.sh):
#     source scripts/venv-on-torch.sh NAME IMPORTS PREFIX
# Sources scripts/setup-torch.sh (the torch 2.11.0 / transformers 5.24.0 venv), then makes (once)
# and reuses a second venv holding the packages pinned in scripts/requirements-NAME.txt, in a
# cache keyed by those requirements and by the torch venv it builds on:
#     ${WARP_CACHE:-$HOME/.cache/warp}/NAME-<key>/
# That venv sees the torch venv's packages through a .pth file (torch, transformers and numpy are
# not downloaded again), and every package of the torch venv is pinned as a constraint, so pip can
# neither upgrade nor duplicate them. A new venv must `import IMPORTS` (e.g. "trl, torch") before
# it counts as made. Exports, besides what setup-torch.sh exports:
#     PREFIX_VENV     that venv; its bin/ is put first on PATH
#     PREFIX_PYTHON   its Python
# Must be sourced from bash; does not change the caller's shell options. Returns non-zero (and
# exports nothing of its own) when the venv cannot be made.

_warp_venv_on_torch() {
  local name="${1:-}" imports="${2:-}" prefix="${3:-}" root req site key venv vsite
  if [ -z "$name" ] || [ -z "$imports" ] || [ -z "$prefix" ]; then
    echo "venv-on-torch: usage: source scripts/venv-on-torch.sh NAME IMPORTS PREFIX" >&2
    return 1
  fi
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  # shellcheck source=scripts/setup-torch.sh
  source "$root/scripts/setup-torch.sh" || return 1
  req="$root/scripts/requirements-$name.txt"
  site="$("$WARP_TORCH_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    || { echo "setup-$name: $WARP_TORCH_PYTHON does not run" >&2; return 1; }
  # (The key's recipe is the one setup-trl.sh and setup-mergekit.sh had: existing caches stay.)
  key="$( (grep -v '^#' "$req"; echo "$site") | sha256sum | cut -c1-12)"
  venv="${WARP_CACHE:-$HOME/.cache/warp}/$name-$key"
  if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    echo "setup-$name: installing scripts/requirements-$name.txt into $venv (once)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" || return 1
    vsite="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
      || return 1
    echo "$site" > "$vsite/_warp_torch_venv.pth"
    "$WARP_TORCH_PYTHON" -m pip freeze --disable-pip-version-check > "$venv/constraints.txt" \
      || return 1
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      -r "$req" -c "$venv/constraints.txt" || {
        echo "setup-$name: pip install failed; nothing exported" >&2
        return 1
      }
    "$venv/bin/python" -c "import $imports" || {
      echo "setup-$name: the new venv cannot import $imports" >&2
      return 1
    }
    touch "$venv/.complete"
  fi
  export "${prefix}_VENV=$venv"
  export "${prefix}_PYTHON=$venv/bin/python"
  case ":$PATH:" in *":$venv/bin:"*) ;; *) export PATH="$venv/bin:$PATH" ;; esac
  echo "setup-$name: $(grep -v '^#' "$req" | tr '\n' ' ')from $venv" >&2
}
if _warp_venv_on_torch "$@"; then
  unset -f _warp_venv_on_torch
  return 0 2>/dev/null || exit 0
else
  unset -f _warp_venv_on_torch
  return 1 2>/dev/null || exit 1
fi
