"""``$PARSL_MPI_PREFIX``: run a command line as the current MPI task's ranks, through Dragon.

    $PARSL_MPI_PREFIX ./sim --step 1        (inside a bash_app with a resource specification)

Asks the block's server (over the worker link whose address and keys are in the
environment) to launch the command on the task's placement, waits, then copies each
rank's output to this process's stdout/stderr, every line prefixed ``[rank N]``. Exits 0
when every rank exited 0; otherwise with the first failing rank's code (1 if that code is
not a plain exit status), after recording the failing ranks for the worker, which turns
the app's failure into a ``RankFailure`` naming them.
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import List

import zmq

from parsl_dragon.task.mpi_env import write_report
from parsl_dragon.vocabulary import ENV_RANK_REPORT, ENV_TASK, ENV_WORKER_ADDRESS, ENV_WORKER_SECRET
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.security import make_worker_link

_HIDDEN = (ENV_WORKER_SECRET,)


def request_launch(argv: List[str]) -> p.RanksDone:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(make_worker_link(sock, os.environ))
    env = {k: v for k, v in os.environ.items() if k not in _HIDDEN}
    sock.send_multipart(p.encode(p.LaunchRanks(task_id=int(os.environ[ENV_TASK]), argv=argv,
                                               cwd=os.getcwd(), env=env)))
    try:
        while True:
            message = p.decode(sock.recv_multipart())
            if isinstance(message, p.RanksDone):
                return message
    finally:
        context.destroy(linger=0)


def relay_output(done: p.RanksDone) -> None:
    """Copy each rank's output files to ours, lines labelled; then remove them."""
    for index, label in enumerate(done.labels):
        name = "mpiexec" if label == "mpiexec" else f"rank-{index}"
        for suffix, stream in (("out", sys.stdout), ("err", sys.stderr)):
            path = os.path.join(done.output_dir, f"{name}.{suffix}")
            try:
                with open(path, errors="replace") as handle:
                    for line in handle:
                        stream.write(f"[{label}] {line.rstrip(chr(10))}\n")
            except OSError:
                continue
    sys.stdout.flush()
    sys.stderr.flush()
    if done.output_dir:
        shutil.rmtree(done.output_dir, ignore_errors=True)


def exit_code(done: p.RanksDone) -> int:
    failed = [(label, code) for label, code in zip(done.labels, done.exit_codes) if code != 0]
    if os.environ.get(ENV_RANK_REPORT):
        write_report(os.environ[ENV_RANK_REPORT], failed)
    if not failed:
        return 0
    code = failed[0][1]
    return code if 0 < code < 256 else 1


def main(argv: List[str] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: $PARSL_MPI_PREFIX COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if ENV_TASK not in os.environ or ENV_WORKER_ADDRESS not in os.environ:
        print("parsl_dragon.task.mpirun: not inside an MPI task of DragonExecutor (no PARSL_DRAGON_TASK); "
              "give the app a parsl_resource_specification with num_nodes / ranks_per_node",
              file=sys.stderr)
        return 2
    done = request_launch(argv)
    if done.error:
        print(f"parsl_dragon.task.mpirun: {done.error}", file=sys.stderr)
        if os.environ.get(ENV_RANK_REPORT):
            write_report(os.environ[ENV_RANK_REPORT], [], error=done.error)
        return 1
    relay_output(done)
    return exit_code(done)


if __name__ == "__main__":
    sys.exit(main())
