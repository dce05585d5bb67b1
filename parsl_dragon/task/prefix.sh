# $PARSL_MPI_PREFIX: run a command line as the current MPI task's ranks.
#
#     $PARSL_MPI_PREFIX ./sim --step 1      (in an app whose resource specification has MPI keys)
#
# A bash script, not a Python program: starting Python costs ~30 ms, as much as starting two
# ranks through Dragon. For ranks Dragon starts (pmi none, cray, pmix) the worker running the
# task sets PARSL_MPI_PREFIX to "bash prefix.sh dragon"; for a backend that cannot work on the
# node, to "bash prefix.sh refused" (the reason in $PARSL_DRAGON_PMI_PROBLEM). pmi="mpiexec" does
# not come here: its prefix is the mpiexec command line itself (parsl_dragon/task/prefix.py).
#
# dragon: writes this process's pid to the task's launch FIFO ($PARSL_DRAGON_RANK_DIR/launch)
# and waits on its own reply FIFO. The worker (parsl_dragon/task/rank_service.py) reads our
# command line, environment and working directory from /proc/<pid>, has the block's server
# start the ranks, writes their output, each line labelled "[rank N]", to out.<pid> and
# err.<pid> beside the FIFO, and our exit code to reply.<pid>. A worker that is gone is
# noticed within 2 s (kill -0), so this never waits for nobody.
#
# Exit: 0 when every rank exited 0; else the first failing rank's code, or 1 when that code is
# not an exit status (a signal, or a rank stopped at its walltime); 1 when the ranks could not
# be launched; 2 outside an MPI task or without a command. Each failure is also appended to
# the task's rank report ($PARSL_DRAGON_RANK_REPORT, lines "<code><TAB><label>" or
# "error<TAB><why>"; the worker's rank service writes the ranks' lines), which the worker
# turns into a RankFailure naming the ranks.

program="\$PARSL_MPI_PREFIX (parsl-dragon)"

fail() {  # fail CODE WHY: say why on stderr and in the rank report, and exit with CODE
    printf '%s: %s\n' "$program" "$2" >&2
    if [ -n "$PARSL_DRAGON_RANK_REPORT" ]; then
        printf 'error\t%s\n' "${2//[$'\t\n']/ }" >>"$PARSL_DRAGON_RANK_REPORT" 2>/dev/null ||
            printf '%s: cannot record this in the rank report %s\n' "$program" "$PARSL_DRAGON_RANK_REPORT" >&2
    fi
    exit "$1"
}

usage() {
    printf 'usage: $PARSL_MPI_PREFIX COMMAND [ARGS...]\n' >&2
    exit 2
}

run_dragon() {
    [ $# -gt 0 ] || usage
    local dir=$PARSL_DRAGON_RANK_DIR worker=$PARSL_DRAGON_WORKER_PID code status got=""
    if [ -z "$dir" ] || [ -z "$worker" ]; then
        fail 2 "not inside an MPI task of DragonExecutor (PARSL_DRAGON_RANK_DIR or PARSL_DRAGON_WORKER_PID is not set); give the app a parsl_resource_specification with num_nodes / ranks_per_node, and run this with the environment the worker gave the app"
    fi
    [ -p "$dir/launch" ] || fail 2 "no launch FIFO at $dir/launch: the MPI task whose environment this is has ended"
    mkfifo -m 600 -- "$dir/reply.$$" || fail 1 "cannot make the reply FIFO $dir/reply.$$"
    # read-write opens of a FIFO never block, whoever is (or is not) at the other end
    exec 3<>"$dir/reply.$$" 4<>"$dir/launch"
    printf '%d\n' $$ >&4
    exec 4>&-
    until IFS= read -r -t 2 -u 3 code; do
        status=$?
        got+=$code  # bash reads a pipe byte by byte: a timeout can fall inside the line
        [ "$status" -gt 128 ] || fail 1 "reading the worker's reply failed (status $status)"
        kill -0 "$worker" 2>/dev/null ||
            fail 1 "the worker (pid $worker) that runs this task is gone: the ranks' outcome can no longer reach this command"
    done
    exec 3<&-
    code=$got$code
    if [ -e "$dir/out.$$" ]; then cat -- "$dir/out.$$"; rm -f -- "$dir/out.$$"; fi
    if [ -e "$dir/err.$$" ]; then cat -- "$dir/err.$$" >&2; rm -f -- "$dir/err.$$"; fi
    exit "$code"
}

case $1 in
    dragon) shift; run_dragon "$@" ;;
    refused) fail 1 "${PARSL_DRAGON_PMI_PROBLEM:-the PMI backend of this task cannot work on this node}" ;;
    *) usage ;;
esac
