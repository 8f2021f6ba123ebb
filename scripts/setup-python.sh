#!/usr/bin/env bash
# Sourced by scripts/test and scripts/demo: makes a Python venv with the test references in a
# cache keyed by the requirements' content (reused across runs, rebuilt when they change), and
# exports WARP_PYTHON for the tests.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_req="$_root/scripts/requirements-test.txt"
_key="$( (python3 --version; cat "$_req") | sha256sum | cut -c1-16)"
_venv="${WARP_CACHE:-$HOME/.cache/warp}/py-$_key"
if [ ! -x "$_venv/bin/python" ] || [ ! -f "$_venv/.complete" ]; then
  echo "setting up Python test references in $_venv" >&2
  rm -rf "$_venv"
  python3 -m venv "$_venv"
  "$_venv/bin/pip" install --quiet --disable-pip-version-check -r "$_req"
  touch "$_venv/.complete"
fi
export WARP_PYTHON="$_venv/bin/python"
