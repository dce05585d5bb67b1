#!/usr/bin/env bash
# THE test command of parsl-dragon (CI runs it through .ci/run).
#
#   scripts/test.sh                  setup-env, our suite (-m "not slow"), Parsl's conformance suite
#   scripts/test.sh --quick          setup-env, our suite only
#   scripts/test.sh [--quick] ARGS   extra ARGS go to pytest for our suite, e.g. -k protocol, -x,
#                                    -m dragon (a later -m replaces the default "not slow")
#
# Steps:
#   1. scripts/setup-env.sh (creates/refreshes .venv)
#   2. python -m pytest tests -m "not slow" ARGS
#   3. scripts/conformance.sh (Parsl's own tests against DragonExecutor), unless --quick:
#      once with local blocks (configs/conformance.py), once with Slurm blocks
#      (configs/conformance_slurm.py) when Slurm is up (under CI=true it must be)
#   4. leak check: no new parsl_dragon/Dragon processes, /dev/shm Dragon pools or
#      /tmp/dragon-* compared with a snapshot taken before step 2 (tests/leaks.py)
#   5. recap of each pytest run's closing summary line and a combined total
#
# Exit status: non-zero if any pytest run failed, if something leaked, or if no test
# ran at all. pytest's exit code 5 ("no tests collected") on one run is not a failure
# when another run did execute tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK=0
ARGS=()
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) ARGS+=("$arg") ;;
    esac
done

say() { echo "[test] $*"; }
trap 'echo "[test] interrupted" >&2; exit 130' INT TERM

bash "$ROOT/scripts/setup-env.sh"

PY="$ROOT/.venv/bin/python"
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$ROOT/.venv/bin:$PATH"  # the dragon launcher and its helper commands
export PYTHONUNBUFFERED=1            # pytest's output is piped through tee below

WORK="$(mktemp -d "${TMPDIR:-/tmp}/parsl-dragon-test.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

bash "$ROOT/scripts/system-packages.sh" || say "WARNING: scripts/system-packages.sh failed: MPI tests will skip (fail under CI=true)"

# Real single-node Slurm for the tests marked `slurm` (scripts/slurm/up.sh), when root or CI=true;
# stopped at exit only if this run started it. If it cannot start, those tests skip (fail under CI).
SLURM_STARTED=0
stop_slurm() { [[ "$SLURM_STARTED" == 1 ]] && bash "$ROOT/scripts/slurm/down.sh" || true; }
trap 'rm -rf "$WORK"; stop_slurm' EXIT
if [[ "$(id -u)" == 0 || "${CI:-}" == true ]]; then
    if slurm_out="$(bash "$ROOT/scripts/slurm/up.sh" 2>&1)"; then
        [[ "$slurm_out" == *"] started"* ]] && SLURM_STARTED=1
        say "slurm: ${slurm_out##*$'\n'}"
    else
        echo "$slurm_out" >&2
        say "WARNING: could not start Slurm (scripts/slurm/up.sh failed): tests marked slurm will skip, or fail under CI=true"
    fi
fi

slurm_up() {  # the test cluster's partition has a usable node
    command -v sinfo >/dev/null 2>&1 &&
        timeout 15 sinfo -h -p debug -o '%a %t' 2>/dev/null | grep -qE '^up (idle|mix|alloc)'
}

"$PY" "$ROOT/tests/leaks.py" snapshot "$WORK/leaks-before.json"

NAMES=()  # one entry per pytest run
RCS=()
LOGS=()

# run_suite NAME COMMAND...: run one pytest run, keep its output and exit code.
run_suite() {
    local name="$1" log="$WORK/$1.log" rc=0
    shift
    say "== $name: $(printf '%q ' "$@")"
    "$@" 2>&1 | tee "$log" || rc=$?
    say "== $name: exit code $rc"
    NAMES+=("$name"); RCS+=("$rc"); LOGS+=("$log")
}

run_suite unit "$PY" -m pytest tests -m "not slow" ${ARGS[@]+"${ARGS[@]}"}

if [[ "$QUICK" == 1 ]]; then
    say "--quick: skipping Parsl's conformance suite (scripts/conformance.sh)"
else
    run_suite conformance bash "$ROOT/scripts/conformance.sh"
    if slurm_up; then
        run_suite conformance-slurm env CONFORMANCE_CONFIG="$ROOT/configs/conformance_slurm.py" \
            bash "$ROOT/scripts/conformance.sh"
    elif [[ "${CI:-}" == true ]]; then
        say "FAILED: CI=true requires the Slurm-backed conformance run, but Slurm's partition debug is not up"
        NAMES+=("conformance-slurm"); RCS+=(1); LOGS+=("/dev/null")
    else
        say "Slurm is not up: skipping the Slurm-backed conformance run"
    fi
fi

leak_rc=0
say "== leak check (new since the start of this run)"
"$PY" "$ROOT/tests/leaks.py" check "$WORK/leaks-before.json" --wait 30 || leak_rc=$?

# Recap: every run's closing summary line, then one combined total line.
count() {  # count REGEX LINE -> the number before REGEX in LINE, or 0
    local n
    n="$(grep -oE "(^|[ =])[0-9]+ $1" <<<"$2" | head -n 1 | grep -oE '[0-9]+' || true)"
    echo "${n:-0}"
}
passed=0; failed=0; errors=0; skipped=0
status=0; ran=0
echo
say "== summary"
for i in "${!NAMES[@]}"; do
    name="${NAMES[$i]}"; rc="${RCS[$i]}"
    line="$(grep -E '^=+ .* in [0-9.]+s.* =+$' "${LOGS[$i]}" | tail -n 1 || true)"
    if [[ -z "$line" ]]; then
        line="(no pytest summary line)"
    fi
    echo "$name (pytest exit code $rc):"
    echo "$line"
    passed=$((passed + $(count passed "$line")))
    failed=$((failed + $(count failed "$line")))
    errors=$((errors + $(count 'errors?' "$line")))
    skipped=$((skipped + $(count skipped "$line")))
    case "$rc" in
        0) ran=1 ;;
        5) ;;  # no tests collected: only a failure if no run executed anything
        *) ran=1; [[ "$status" -ne 0 ]] || status="$rc" ;;
    esac
done
if [[ "$ran" -eq 0 ]]; then
    say "FAILED: no test ran at all (pytest exit code 5 on every run)"
    status=5
fi
if [[ "$leak_rc" -ne 0 ]]; then
    say "FAILED: the test run left Dragon processes, shm pools or /tmp/dragon-* behind (see above)"
    [[ "$status" -ne 0 ]] || status=1
fi
if [[ "$status" -eq 0 ]]; then
    say "OK"
else
    say "FAILED (exit code $status)"
fi
if [[ "$errors" -gt 0 ]]; then
    echo "($errors errors are counted as failed below)"
fi
# Last line, in the plain "N passed, N failed, N skipped" form.
echo "total: $passed passed, $((failed + errors)) failed, $skipped skipped"
exit "$status"
