"""The only module that imports ``dragon``: node discovery and worker processes.

Workers are persistent Python processes in one Dragon ``ProcessGroup`` with
``restart=True``: Dragon replaces a worker that dies, and the server learns of
the death through :meth:`DragonBackend.dead_workers` (polled from the server's
single thread, because a ProcessGroup client object is not thread-safe).
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from parsl_dragon.server import pmi

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    hostname: str
    cpus: int
    gpus: int


@dataclass
class RankJob:
    """One launch of an MPI task's ranks: what to run and where (from the task's placement)."""

    task_id: int
    argv: List[str]
    cwd: str
    env: Dict[str, str]
    hosts: List[str]
    ranks_per_node: int
    pmi: str = "none"
    cores: List[List[int]] = field(default_factory=list)  # per host: core ids, cpus_per_rank per rank
    gpus: List[List[int]] = field(default_factory=list)   # per host: gpu ids, gpus_per_rank per rank
    cpus_per_rank: int = 1
    gpus_per_rank: int = 0
    cpu_bind: bool = False
    launcher_options: str = ""
    walltime: Optional[float] = None
    output_dir: str = "."


@dataclass
class RankOutcome:
    """Exit code per rank (``labels`` name them); ``error`` if nothing could be launched."""

    exit_codes: List[int]
    labels: List[str]
    error: str = ""


def _import_dragon():
    try:
        from dragon.infrastructure.policy import Policy
        from dragon.native.machine import Node, System
        from dragon.native.process import ProcessTemplate
        from dragon.native.process_group import ProcessGroup
    except ImportError as exc:  # pragma: no cover - the server only runs inside dragon
        raise RuntimeError("the Dragon server needs the 'dragonhpc' package (pip install dragonhpc)") from exc
    return Policy, Node, System, ProcessTemplate, ProcessGroup


WALLTIME_EXIT = -2  # Dragon's code for a process stopped at its walltime


def default_workers(cpus: int) -> int:
    """Leave one core to Dragon's busy-polling infrastructure: max(1, cpus - 1)."""
    return max(1, cpus - 1)


class DragonBackend:
    """Starts, watches and stops the worker processes of one server."""

    def __init__(self, workers_per_node: Optional[int] = None) -> None:
        self.workers_per_node = workers_per_node
        self._dragon = _import_dragon()
        self._group = None
        self._nodes: List[NodeInfo] = []
        self._reported: Set[int] = set()
        self._expected = 0

    def nodes(self) -> List[NodeInfo]:
        if not self._nodes:
            _, Node, System, _, _ = self._dragon
            for h_uid in System().nodes:
                node = Node(h_uid)
                self._nodes.append(NodeInfo(node.hostname, node.num_cpus, node.num_gpus))
        return self._nodes

    def hostnames(self) -> List[str]:
        return [n.hostname for n in self.nodes()]

    def expected_workers(self) -> int:
        return self._expected

    def start_workers(self, address: str, env: Dict[str, str], cwd: str) -> int:
        """Launch the worker group: ``workers_per_node`` per node (default cpus - 1)."""
        Policy, _, _, ProcessTemplate, ProcessGroup = self._dragon
        group = ProcessGroup(restart=True, ignore_error_on_exit=True)
        worker_env = dict(os.environ, **env)
        for node in self.nodes():
            count = self.workers_per_node or default_workers(node.cpus)
            policy = Policy(placement=Policy.Placement.HOST_NAME, host_name=node.hostname)
            template = ProcessTemplate(
                target=sys.executable, args=["-m", "parsl_dragon.server.worker", node.hostname],
                cwd=cwd, env=worker_env, policy=policy)
            group.add_process(nproc=count, template=template)
            self._expected += count
        group.init()
        group.start()
        self._group = group
        return self._expected

    def run_ranks(self, job: RankJob, on_started=None) -> RankOutcome:
        """Launch and wait for an MPI task's ranks (called from a per-launch thread)."""
        return run_ranks(job, on_started)

    def dead_workers(self) -> List[Tuple[int, int]]:
        """(puid, exit code) of workers that died since the last call."""
        if self._group is None:
            return []
        try:
            inactive = self._group.inactive_puids
        except Exception as exc:  # dragon raises several unrelated types here
            logger.warning("Could not query the worker group: %s", exc)
            return []
        fresh = [(puid, code) for puid, code in inactive if puid not in self._reported]
        self._reported.update(puid for puid, _ in fresh)
        return fresh

    def stop(self, patience: float = 2.0) -> None:
        """Stop restarting, let workers exit, then stop and close the group."""
        group, self._group = self._group, None
        if group is None:
            return
        try:
            group.stop_restart()
            group.join(timeout=patience)
        except Exception as exc:
            logger.info("Workers did not all exit within %.1fs (%s); stopping them", patience, exc)
        try:
            group.stop(patience=patience)
        except Exception as exc:
            logger.debug("group.stop: %s", exc)
        try:
            group.close(patience=patience)
        except Exception as exc:
            logger.warning("Closing the worker group failed: %s", exc)


def run_ranks(job: RankJob, on_started=None) -> RankOutcome:
    """Start the job's ranks through Dragon and wait for them; call from a dedicated thread.

    ``mpiexec``: one Dragon process on the first host runs the site's mpiexec with our host
    list. ``none``/``cray``/``pmix``: a ProcessGroup with one member per rank, each pinned to
    its host (and cores/GPUs when asked). A backend that cannot work here fails at once.
    """
    why = pmi.problem(job.pmi, job.env)
    if why:
        return RankOutcome([], [], error=why)
    os.makedirs(job.output_dir, exist_ok=True)
    started = on_started or (lambda: None)
    if job.pmi == "mpiexec":
        return _run_mpiexec(job, started)
    return _run_group(job, started)


def _rank_policy(Policy, job: RankJob, host_index: int, local_rank: int):
    kwargs = {"placement": Policy.Placement.HOST_NAME, "host_name": job.hosts[host_index]}
    if job.cpu_bind and host_index < len(job.cores) and job.cores[host_index]:
        per = job.cpus_per_rank
        kwargs["cpu_affinity"] = job.cores[host_index][local_rank * per:(local_rank + 1) * per]
    if job.gpus_per_rank and host_index < len(job.gpus) and job.gpus[host_index]:
        per = job.gpus_per_rank
        kwargs["gpu_affinity"] = job.gpus[host_index][local_rank * per:(local_rank + 1) * per]
    return Policy(**kwargs)


def _run_group(job: RankJob, started) -> RankOutcome:
    Policy, _, _, ProcessTemplate, ProcessGroup = _import_dragon()
    group = ProcessGroup(restart=False, ignore_error_on_exit=True,
                         pmi=None if job.pmi == "none" else job.pmi)
    labels = []
    for host_index, host in enumerate(job.hosts):
        for local_rank in range(job.ranks_per_node):
            rank = len(labels)
            env = dict(job.env, PARSL_RANK=str(rank), PARSL_LOCAL_RANK=str(local_rank),
                       PARSL_NODE_RANK=str(host_index))
            template = ProcessTemplate(
                target=job.argv[0], args=job.argv[1:], cwd=job.cwd, env=env,
                stdout=os.path.join(job.output_dir, f"rank-{rank}.out"),
                stderr=os.path.join(job.output_dir, f"rank-{rank}.err"),
                policy=_rank_policy(Policy, job, host_index, local_rank))
            group.add_process(nproc=1, template=template)
            labels.append(f"rank {rank}")
    group.init()
    try:
        group.start()
        started()
        timed_out = _wait_for_ranks(group, len(labels), job.walltime)
        codes = [code for _, code in sorted(group.inactive_puids)]
    finally:
        _close_quietly(group)
    if timed_out:
        codes = [WALLTIME_EXIT if c == 0 else c for c in codes]
    codes += [WALLTIME_EXIT] * (len(labels) - len(codes))
    return RankOutcome(codes, labels)


def _close_quietly(group) -> None:
    """Close a finished rank group. On multi-node runtimes dragonhpc 0.15's close() can raise
    "ProcessGroup manager is not in state State.DEAD" after every rank has exited; the exit
    codes are already collected then, so that is logged, not turned into a failed launch."""
    try:
        group.close(patience=10.0)
    except Exception as exc:
        logger.warning("Closing a finished rank group failed (ranks are done): %s", exc)


def _wait_for_ranks(group, count: int, walltime: Optional[float]) -> bool:
    """Wait until all ``count`` ranks have exited; stop them at the walltime (True if hit).

    Polls ``inactive_puids`` rather than ``join(timeout)``: in dragonhpc 0.15 a join that
    times out leaves a stale reply behind, which breaks the group's next request."""
    deadline = None if walltime is None else time.monotonic() + walltime
    while len(group.inactive_puids) < count:
        if deadline is not None and time.monotonic() > deadline:
            logger.warning("Ranks exceeded their walltime of %.1fs: stopping them", walltime)
            group.stop(patience=1.0)
            return True
        time.sleep(0.2)
    return False


def _run_mpiexec(job: RankJob, started) -> RankOutcome:
    Policy, _, _, ProcessTemplate, _ = _import_dragon()
    from dragon.native.process import Process

    mpiexec = shutil.which("mpiexec", path=job.env.get("PATH")) or "mpiexec"
    args = ["-n", str(job.ranks_per_node * len(job.hosts)), "-ppn", str(job.ranks_per_node),
            "-hosts", ",".join(job.hosts), *shlex.split(job.launcher_options), *job.argv]
    process = Process(target=mpiexec, args=args, cwd=job.cwd, env=job.env,
                      stdout=os.path.join(job.output_dir, "mpiexec.out"),
                      stderr=os.path.join(job.output_dir, "mpiexec.err"),
                      policy=Policy(placement=Policy.Placement.HOST_NAME, host_name=job.hosts[0]))
    process.start()
    started()
    deadline = None if job.walltime is None else time.monotonic() + job.walltime
    while process.join(timeout=0.5) is None:
        if deadline is not None and time.monotonic() > deadline:
            process.kill()
            process.join(timeout=5)
            return RankOutcome([WALLTIME_EXIT], ["mpiexec"])
    return RankOutcome([process.returncode], ["mpiexec"])
