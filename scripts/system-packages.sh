#!/usr/bin/env bash
# System packages the test-suite uses besides Slurm (scripts/slurm/up.sh installs that):
# MPICH (mpicc, mpiexec) for the real MPI test of tests/integration/test_mpi.py, and iproute2
# (ss) with which tests/integration/test_links.py cuts a worker's TCP link.
# Installs with apt as root when missing; otherwise says what is missing and exits 0
# (the MPI test then skips, or fails under CI=true).
set -euo pipefail
missing=()
command -v mpicc >/dev/null 2>&1 || missing+=(libmpich-dev)
command -v mpiexec >/dev/null 2>&1 || missing+=(mpich)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "[system-packages] MPICH and iproute2 present: $(command -v mpiexec) $(command -v ss)"
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "[system-packages] not root: cannot install ${missing[*]}; tests that need them will skip" >&2
    exit 0
fi
echo "[system-packages] installing ${missing[*]} with apt"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[system-packages] installed ${missing[*]}"
