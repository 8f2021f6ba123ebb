#!/usr/bin/env bash
# Installs what the Slurm tests (tests/it/slurm.rs) need: Debian's slurm-wlm and munge. The tests
# start their own one-node cluster from these packages (config, state and logs in a temp folder;
# no system file is changed) and say "skipped: …" where the packages or root are missing.
# Idempotent: returns at once when the programs are present. Never fails the caller: without root
# or apt-get it only says why it did nothing.
set -uo pipefail
need=(munged slurmctld slurmd sbatch squeue scontrol scancel sinfo)
missing=()
for p in "${need[@]}"; do
  command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-slurm: not root, not installing slurm-wlm/munge (missing: ${missing[*]}); the Slurm tests will be skipped" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-slurm: no apt-get, not installing slurm-wlm/munge (missing: ${missing[*]}); the Slurm tests will be skipped" >&2
  exit 0
fi
echo "setup-slurm: installing slurm-wlm and munge (missing: ${missing[*]})" >&2
export DEBIAN_FRONTEND=noninteractive
install() { apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; }
# A fresh machine may have no package lists yet: update once and retry.
if ! install && ! { apt-get update -qq && install; }; then
  echo "setup-slurm: apt-get could not install slurm-wlm and munge; the Slurm tests will be skipped" >&2
fi
exit 0
