#!/usr/bin/env bash
# Sourced (`source scripts/setup-trl.sh`) before running the TRL backend of the RL stage
# (python/warp_align/trl_backend.py), tests/trl.rs, bench/rl_step.sh or scripts/test-python.
#
# Sources scripts/setup-torch.sh (the torch 2.11.0 / transformers 5.24.0 venv), then makes (once)
# and reuses a second venv on top of it holding TRL, accelerate, datasets (and maturin, pytest) at
# the versions pinned in scripts/requirements-trl.txt (scripts/venv-on-torch.sh: cached in
# ${WARP_CACHE:-$HOME/.cache/warp}/trl-<key>/, keyed by those requirements and the torch venv).
# Exports, besides what setup-torch.sh exports:
#     WARP_TRL_PYTHON   the Python that runs python/warp_align/trl_backend.py (import trl works)
#     WARP_TRL_VENV     that venv; its bin/ (with `accelerate`) is put first on PATH
# Must be sourced from bash; does not change the caller's shell options. A plain
# `bash scripts/setup-trl.sh` just fills the cache.
# shellcheck source=scripts/venv-on-torch.sh
source "$(dirname "${BASH_SOURCE[0]}")/venv-on-torch.sh" trl "trl, accelerate, datasets, torch" WARP_TRL
