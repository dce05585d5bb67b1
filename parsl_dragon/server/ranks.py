"""Rank launches of MPI tasks: one thread per launch, results handed back to the service loop.

``$PARSL_MPI_PREFIX`` (``parsl_dragon.task.mpirun``) sends ``LaunchRanks`` over the worker
link; the service turns it into a :class:`~parsl_dragon.server.backend.RankJob` from the
task's placement and calls :meth:`RankLaunches.start`. Each launch runs the backend's
``run_ranks`` in its own thread (a Dragon ProcessGroup object stays in the thread that
made it). The service loop calls :meth:`RankLaunches.finished` every pass and replies
``RanksDone``. A launch that has not started its ranks within ``start_timeout_ms`` plus
``per_rank_ms`` for each of its ranks (e.g. a PMI wire-up that hangs) is answered with
an error and abandoned, so no task can wedge the server. ``start_timeout_ms`` comes from the
executor's ``rank_startup_timeout_ms`` (``PARSL_DRAGON_RANK_STARTUP_TIMEOUT``); ``-1`` waits
forever.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.spec import TaskSpec
from parsl_dragon.server.backend import RankJob, RankOutcome  # dataclasses; dragon is imported lazily
from parsl_dragon.vocabulary import DEFAULT_RANK_STARTUP_TIMEOUT_MS, NO_LIMIT, RANK_STARTUP_MS_PER_RANK
from parsl_dragon.wire import protocol as p

logger = logging.getLogger(__name__)


@dataclass
class _Launch:
    key: int
    identity: bytes
    task_id: int
    client_task_id: int
    begun: float
    limit: Optional[float]  # seconds the ranks may take to start; None: no limit
    started: bool = False
    answered: bool = False


class RankLaunches:
    """In-flight launches and their replies."""

    def __init__(self, backend, start_timeout_ms: int = DEFAULT_RANK_STARTUP_TIMEOUT_MS,
                 per_rank_ms: int = RANK_STARTUP_MS_PER_RANK) -> None:
        self.backend = backend
        self.start_timeout_ms = start_timeout_ms
        self.per_rank_ms = per_rank_ms
        self._launches: Dict[int, _Launch] = {}
        self._done: "queue.Queue[Tuple[int, object]]" = queue.Queue()
        self._next = 0

    def start(self, identity: bytes, job, client_task_id: int) -> None:
        self._next += 1
        launch = _Launch(self._next, identity, job.task_id, client_task_id, time.monotonic(),
                         self.start_limit(len(job.hosts) * job.ranks_per_node))
        self._launches[launch.key] = launch
        logger.info("Launching ranks of task %d (client task %d): %s on %s, pmi=%s", job.task_id,
                    client_task_id, job.argv, job.hosts, job.pmi)
        threading.Thread(target=self._run, args=(launch, job), daemon=True,
                         name=f"ranks-{job.task_id}-{launch.key}").start()

    def start_limit(self, ranks: int) -> Optional[float]:
        """Seconds a launch of ``ranks`` ranks may take to start: base + per-rank allowance."""
        if self.start_timeout_ms == NO_LIMIT:
            return None
        return (self.start_timeout_ms + self.per_rank_ms * ranks) / 1000.0

    def _run(self, launch: _Launch, job) -> None:
        def on_started() -> None:
            launch.started = True
        try:
            outcome = self.backend.run_ranks(job, on_started)
        except Exception as exc:  # anything from Dragon: report, never kill the server
            logger.exception("Launch of task %d's ranks failed", job.task_id)
            outcome = RankOutcome([], [], error=f"launching the ranks failed: {exc!r}")
        self._done.put((launch.key, (outcome, job.output_dir)))

    def finished(self) -> List[Tuple[bytes, p.RanksDone]]:
        """Replies to send now: completed launches, and launches that never started."""
        replies = []
        while True:
            try:
                key, (outcome, output_dir) = self._done.get_nowait()
            except queue.Empty:
                break
            launch = self._launches.pop(key, None)
            if launch is not None and not launch.answered:
                replies.append((launch.identity, p.RanksDone(
                    task_id=launch.task_id, exit_codes=list(outcome.exit_codes), labels=list(outcome.labels),
                    output_dir=output_dir, error=outcome.error)))
        replies.extend(self._overdue())
        return replies

    def _overdue(self) -> List[Tuple[bytes, p.RanksDone]]:
        now = time.monotonic()
        replies = []
        for launch in self._launches.values():
            if launch.started or launch.answered or launch.limit is None or now - launch.begun <= launch.limit:
                continue
            launch.answered = True
            logger.error("Ranks of task %d did not start within %.1fs; abandoning the launch",
                         launch.task_id, launch.limit)
            replies.append((launch.identity, p.RanksDone(
                task_id=launch.task_id, exit_codes=[], labels=[],
                error=f"the ranks did not start within {launch.limit:.1f}s (PMI wire-up hung, or a slow "
                      "start: raise rank_startup_timeout_ms / PARSL_DRAGON_RANK_STARTUP_TIMEOUT); "
                      "the launch was abandoned")))
        return replies

    def running(self) -> int:
        return sum(1 for launch in self._launches.values() if not launch.answered)


def job_from(message: p.LaunchRanks, spec: TaskSpec, placement: Placement, output_dir: str) -> RankJob:
    """The RankJob for a LaunchRanks request of an MPI task with this spec and placement."""
    assert spec.pmi is not None, "only MPI tasks have a placement"
    return RankJob(
        task_id=message.task_id, argv=list(message.argv), cwd=message.cwd, env=dict(message.env),
        hosts=list(placement.hosts), ranks_per_node=spec.ranks_per_node, pmi=spec.pmi,
        cores=[list(ids) for ids in placement.cores], gpus=[list(ids) for ids in placement.gpus],
        cpus_per_rank=spec.cpus_per_rank, gpus_per_rank=spec.gpus_per_rank, cpu_bind=spec.cpu_bind,
        launcher_options=spec.launcher_options,
        walltime=None if spec.walltime is None else float(spec.walltime), output_dir=output_dir)
