#!/usr/bin/env bash
# THE demo command: set up .venv, then run the example pipeline on the local default
# (one block on this machine with a single-node Dragon runtime; no scheduler needed).
#
#   scripts/demo.sh [pipeline args]      e.g. scripts/demo.sh --simulations 8
#
# Output goes to ./demo-output (report, simulation data, Parsl run directory).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup-env.sh"
export PATH="$ROOT/.venv/bin:$PATH"  # the dragon launcher and its helper commands
exec "$ROOT/.venv/bin/python" "$ROOT/examples/pipeline.py" "$@"
