#!/usr/bin/env bash
# Sourced (`source scripts/setup-mergekit.sh`) before the tests that compare `warp merge` with
# mergekit (tests/it/merge_recipe.rs) or bench/merge_recipe.sh.
#
# Sources scripts/setup-torch.sh (the torch 2.11.0 / transformers 5.24.0 venv), then makes (once)
# and reuses a second venv on top of it holding mergekit at the version pinned in
# scripts/requirements-mergekit.txt (scripts/venv-on-torch.sh: cached in
# ${WARP_CACHE:-$HOME/.cache/warp}/mergekit-<key>/, keyed by those requirements and the torch
# venv). Exports, besides what setup-torch.sh exports:
#     WARP_MERGEKIT_PYTHON   the Python that runs tests/ref/mergekit_ref.py (import mergekit works)
#     WARP_MERGEKIT_VENV     that venv; its bin/ (with `mergekit-yaml`) is put first on PATH
# Must be sourced from bash; does not change the caller's shell options. A plain
# `bash scripts/setup-mergekit.sh` just fills the cache.
# shellcheck source=scripts/venv-on-torch.sh
source "$(dirname "${BASH_SOURCE[0]}")/venv-on-torch.sh" mergekit "mergekit, mergekit.merge, torch" WARP_MERGEKIT
