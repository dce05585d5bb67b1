"""The environment an MPI task sees, HTEX-compatible, and what ``$PARSL_MPI_PREFIX`` runs.

For a task with a placement the worker exports, for the duration of the task::

    PARSL_NUM_NODES, PARSL_RANKS_PER_NODE, PARSL_NUM_RANKS   as in HTEX's MPI mode
    PARSL_MPI_NODELIST        comma-separated hosts of the task's ranks
    PARSL_MPI_PREFIX          "<python> -m parsl_dragon.task.mpirun": runs the rest of the command
                              line as the task's ranks, launched by Dragon
    PARSL_DRAGON_TASK         the server's id of the task (used by parsl_dragon.task.mpirun)
    PARSL_DRAGON_RANK_REPORT  file where parsl_dragon.task.mpirun records failing ranks

Each rank additionally gets ``PARSL_RANK``, ``PARSL_LOCAL_RANK`` and ``PARSL_NODE_RANK``.

The rank report lives in a directory made for the task (0700, removed afterwards); it is
written by replacing it with a new file and read without following a symlink, so a link
planted at its path can neither redirect the write nor feed the read.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from typing import Dict, Iterator, List, Tuple

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.spec import TaskSpec
from parsl_dragon.vocabulary import ENV_RANK_REPORT, ENV_TASK, RANK_LAUNCHER_MODULE

REPORT_FILE = "ranks.json"


def task_environment(task_id: int, spec: TaskSpec, placement: Placement, report: str) -> Dict[str, str]:
    """The variables an MPI task sees (the module docstring lists them)."""
    return {
        "PARSL_NUM_NODES": str(len(placement.hosts)),
        "PARSL_RANKS_PER_NODE": str(spec.ranks_per_node),
        "PARSL_NUM_RANKS": str(spec.num_ranks),
        "PARSL_MPI_NODELIST": ",".join(placement.hosts),
        "PARSL_MPI_PREFIX": f"{shlex.quote(sys.executable)} -m {RANK_LAUNCHER_MODULE}",
        ENV_TASK: str(task_id),
        ENV_RANK_REPORT: report,
    }


@contextlib.contextmanager
def mpi_task(task_id: int, spec: TaskSpec, placement: Placement) -> Iterator[str]:
    """Export the MPI variables while the task runs; yields the rank report path (not yet a file)."""
    directory = tempfile.mkdtemp(prefix=f"parsl-dragon-ranks-{task_id}-")  # new, 0700
    report = os.path.join(directory, REPORT_FILE)
    saved = dict(os.environ)
    os.environ.update(task_environment(task_id, spec, placement, report))
    try:
        yield report
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(directory, ignore_errors=True)


def write_report(path: str, failed: List[Tuple[str, int]], error: str = "") -> None:
    """Record a launch's failing ranks at ``path``: a new file (O_EXCL) renamed over it, so
    whatever is at ``path``, a symlink included, is replaced, never written through."""
    fd, tmp = tempfile.mkstemp(prefix=".ranks-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"failed": failed, "error": error}, handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_report(path: str) -> Tuple[List[Tuple[str, int]], str]:
    """Failing ranks and launch error recorded by the last launch; the file is removed."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)) as handle:
            data = json.load(handle)
    except (OSError, ValueError, RecursionError):
        data = {}
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    try:
        return [(str(label), int(code)) for label, code in data.get("failed") or []], str(data.get("error") or "")
    except (AttributeError, TypeError, ValueError):  # not what write_report writes
        return [], ""
