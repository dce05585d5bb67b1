#!/usr/bin/env bash
# Create/refresh the development environment: <repo>/.venv with parsl-dragon
# installed in editable mode with all extras (Dragon runtime + test tools).
#
#   scripts/setup-env.sh            # idempotent; fast no-op when nothing changed
#   scripts/setup-env.sh --force    # reinstall even if nothing changed
#
# Environment:
#   PYTHON=/path/to/python3.11      interpreter used to create .venv (default:
#                                   python3.11 if on PATH, else python3)
#   PARSL_DRAGON_SETUP_FORCE=1      same as --force
#
# Non-interactive; safe to run in a fresh clone and to re-run any number of times.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.parsl-dragon-setup.stamp"
MIN_PY="3.11"  # dragonhpc 0.15.0 (the [server] extra) requires Python >= 3.11

FORCE="${PARSL_DRAGON_SETUP_FORCE:-0}"
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "setup-env: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "[setup-env] $*"; }

python_ok() {  # python_ok INTERPRETER: runs and is >= MIN_PY
    "$1" -c "import sys; sys.exit(0 if sys.version_info >= tuple(map(int, '$MIN_PY'.split('.'))) else 1)" \
        >/dev/null 2>&1
}

if [[ -x "$VPY" ]] && "$VPY" -c "pass" >/dev/null 2>&1; then
    say "using existing virtualenv $VENV ($("$VPY" -V 2>&1))"
else
    BASE="${PYTHON:-}"
    if [[ -z "$BASE" ]]; then
        if command -v python3.11 >/dev/null 2>&1 && python_ok python3.11; then
            BASE=python3.11
        else
            BASE=python3
        fi
    fi
    if ! python_ok "$BASE"; then
        echo "[setup-env] ERROR: $BASE is missing or older than Python $MIN_PY; set PYTHON=/path/to/python$MIN_PY" >&2
        exit 1
    fi
    # `python -m venv` over an existing (broken) .venv repairs it in place; it deletes nothing.
    say "creating virtualenv $VENV with $(command -v "$BASE") ($("$BASE" -V 2>&1))"
    "$BASE" -m venv "$VENV"
fi

# Reinstall only when the packaging files or the interpreter changed since the last
# successful run, or when the installed environment no longer imports.
want_stamp="$(cat "$ROOT/pyproject.toml" "$ROOT/setup.cfg" "$ROOT/setup.py" 2>/dev/null | "$VPY" -c '
import hashlib, sys
print(hashlib.sha256(sys.stdin.buffer.read() + sys.version.encode()).hexdigest())')"
have_stamp="$(cat "$STAMP" 2>/dev/null || true)"

installed_ok() {  # from outside the repo, so it is the installed package that is found
    (cd / && "$VPY" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as md, importlib.util, sys
md.version("parsl-dragon")
for mod in ("parsl_dragon", "parsl", "zmq", "dragon", "pytest", "pytest_timeout", "random_order", "hypothesis",
            "globus_compute_endpoint"):
    if importlib.util.find_spec(mod) is None:
        sys.exit(1)
EOF
    )
}

if [[ "$FORCE" != 1 && "$want_stamp" == "$have_stamp" ]] && installed_ok; then
    say "parsl-dragon[all] already installed and packaging unchanged: nothing to do (--force to reinstall)"
else
    rm -f "$STAMP"
    say "upgrading pip"
    "$VPY" -m pip install --upgrade pip
    say "installing parsl-dragon in editable mode with all extras: pip install -e \".[all]\" (in $ROOT)"
    "$VPY" -m pip install -e ".[all]"
    echo "$want_stamp" > "$STAMP"
fi

say "ready: $VPY ($("$VPY" -V 2>&1)); activate with: source $VENV/bin/activate"
