"""The environment an MPI task sees, HTEX-compatible, and its rank report.

For a task with a placement the worker exports, for the duration of the task::

    PARSL_NUM_NODES, PARSL_RANKS_PER_NODE, PARSL_NUM_RANKS   as in HTEX's MPI mode
    PARSL_MPI_NODELIST        comma-separated hosts of the task's ranks
    PARSL_MPI_PREFIX          runs the rest of the command line as the task's ranks
                              (``task/prefix.py`` says what it is for each PMI backend)
    PARSL_DRAGON_TASK         the server's id of the task
    PARSL_DRAGON_RANK_DIR     the task's private directory (0700): the launch FIFO and the
                              prefix's reply FIFOs and output files live there
    PARSL_DRAGON_WORKER_PID   the worker running the task (the prefix stops waiting if it is gone)
    PARSL_DRAGON_RANK_REPORT  file in that directory where failing ranks are noted
    PARSL_DRAGON_PMI_PROBLEM  only when the task's PMI backend cannot work on this node: why
    PARSL_DRAGON_RANK_GPUS, PARSL_DRAGON_GPUS_PER_RANK
                              only for pmi="mpiexec" with gpus_per_rank: every host's device
                              ids and one rank's share (``task/gpu_bind.sh`` binds each rank)
    SLURM_OVERLAP=1           only inside a Slurm job: every srun the task runs (mpiexec's own,
                              Hydra starts its proxies with one) may share the nodes with the
                              step Dragon's runtime holds them with; without it that srun
                              waits for the runtime's step to end, i.e. forever

Each rank additionally gets ``PARSL_RANK``, ``PARSL_LOCAL_RANK`` and ``PARSL_NODE_RANK``.

The rank report is appended to by each launch of Dragon-started ranks (the worker's rank
service) and by ``prefix.sh refused`` (a backend that cannot work here), one line per failing
rank or launch error; a ``pmi="mpiexec"`` launch reports through mpiexec's own exit code::

    <exit code> TAB <label>          e.g. "7\trank 1", "-2\trank 0" (stopped at its walltime)
    error TAB <why the ranks were not launched>

It is read once, when the task ends, without following a symlink and then removed, with
the directory.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.spec import TaskSpec
from parsl_dragon.task.devices import rank_gpu_environment
from parsl_dragon.task.prefix import prefix_command
from parsl_dragon.vocabulary import ENV_PMI_PROBLEM, ENV_RANK_DIR, ENV_RANK_REPORT, ENV_TASK, ENV_WORKER_PID

REPORT_FILE = "ranks.report"
LAUNCH_FIFO = "launch"  # prefix.sh writes its pid here (dragon mode)
ERROR_LABEL = "error"


@dataclass(frozen=True)
class MpiTask:
    """An MPI task while it runs: its private directory and the rank report in it."""

    task_id: int
    directory: str
    report: str

    @property
    def launch_fifo(self) -> str:
        return os.path.join(self.directory, LAUNCH_FIFO)


def task_environment(task: MpiTask, spec: TaskSpec, placement: Placement, problem: Optional[str] = None,
                     devices: Sequence[Sequence[str]] = ()) -> Dict[str, str]:
    """The variables an MPI task sees (the module docstring lists them)."""
    env = {
        "PARSL_NUM_NODES": str(len(placement.hosts)),
        "PARSL_RANKS_PER_NODE": str(spec.ranks_per_node),
        "PARSL_NUM_RANKS": str(spec.num_ranks),
        "PARSL_MPI_NODELIST": ",".join(placement.hosts),
        "PARSL_MPI_PREFIX": prefix_command(spec, placement, problem),
        ENV_TASK: str(task.task_id),
        ENV_RANK_DIR: task.directory,
        ENV_WORKER_PID: str(os.getpid()),
        ENV_RANK_REPORT: task.report,
    }
    if problem:
        env[ENV_PMI_PROBLEM] = problem
    if spec.gpus_per_rank and spec.pmi == "mpiexec":
        env.update(rank_gpu_environment(placement, devices, spec.gpus_per_rank))
    if os.environ.get("SLURM_JOB_ID"):
        env["SLURM_OVERLAP"] = "1"
    return env


@contextlib.contextmanager
def mpi_task(task_id: int, spec: TaskSpec, placement: Placement, problem: Optional[str] = None,
             devices: Sequence[Sequence[str]] = ()) -> Iterator[MpiTask]:
    """Export the MPI variables while the task runs (``problem``: why its PMI backend cannot
    work here, which every launch then reports; ``devices``: its GPU ids per host); the
    directory is removed afterwards."""
    directory = tempfile.mkdtemp(prefix=f"parsl-dragon-ranks-{task_id}-")  # new, 0700
    task = MpiTask(task_id, directory, os.path.join(directory, REPORT_FILE))
    saved = dict(os.environ)
    os.environ.update(task_environment(task, spec, placement, problem, devices))
    try:
        yield task
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(directory, ignore_errors=True)


def note_failures(path: str, failed: List[Tuple[str, int]], error: str = "") -> None:
    """Append a launch's failing ranks (and why it could not launch) to the rank report."""
    lines = [f"{int(code)}\t{_one_line(label)}\n" for label, code in failed]
    if error:
        lines.append(f"{ERROR_LABEL}\t{_one_line(error)}\n")
    if lines:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write("".join(lines))


def _one_line(text: str) -> str:
    return " ".join(str(text).replace("\t", " ").splitlines())


def read_report(path: str) -> Tuple[List[Tuple[str, int]], str]:
    """Failing ranks and launch errors noted by every launch of the task; the file is removed.
    A line that is not what the prefix or the rank service writes is ignored."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC),
                       errors="replace") as handle:
            lines = handle.read(1 << 20).splitlines()
    except OSError:
        lines = []
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    failed, errors = [], []
    for line in lines:
        first, _, rest = line.partition("\t")
        if first == ERROR_LABEL:
            errors.append(rest)
            continue
        with contextlib.suppress(ValueError):
            failed.append((rest, int(first)))
    return failed, "; ".join(errors)
