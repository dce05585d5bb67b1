"""Rank launches of MPI tasks: one thread per launch, results handed back to the service loop.

Each worker sends ``LaunchRanks`` over its rank link (identity ``<worker_id>/ranks``), several
launches possibly in flight, told apart by ``launch``; every ``RanksDone`` echoes it. The
service turns a request into a :class:`~parsl_dragon.server.backend.RankJob` from the task's
placement (:func:`refusal` first: ``mpiexec`` ranks are not the server's to start) and calls
:meth:`RankLaunches.start`. Each launch runs the backend's ``run_ranks`` in its own thread (a
Dragon ProcessGroup object stays in the thread that made it); when it is done the thread
writes one byte to :attr:`RankLaunches.wakeup`, a pipe the service loop polls, so the reply
leaves at once. The loop then calls :meth:`RankLaunches.finished` and sends the replies.

A launch that has not started its ranks within ``start_timeout_ms`` plus ``per_rank_ms`` for
each of its ranks (e.g. a PMI wire-up that hangs) is answered with an error and abandoned, so
no task can wedge the server; ``start_timeout_ms`` comes from the executor's
``rank_startup_timeout_ms`` (``PARSL_DRAGON_RANK_STARTUP_TIMEOUT``); ``-1`` waits forever.
Ranks never outlive their task: :meth:`RankLaunches.cancel_task` (the task ended, its worker
or client is gone) and abandonment both tell the launch's thread to stop its ranks.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from parsl_dragon.core.accelerators import Accelerators, device_ids
from parsl_dragon.core.placement import Placement
from parsl_dragon.core.spec import TaskSpec
from parsl_dragon.server.backend import MPIEXEC_REFUSED, RankJob, RankOutcome  # dragon is imported lazily
from parsl_dragon.server.taskbook import Task
from parsl_dragon.vocabulary import DEFAULT_RANK_STARTUP_TIMEOUT_MS, NO_LIMIT, RANK_STARTUP_MS_PER_RANK
from parsl_dragon.wire import protocol as p

logger = logging.getLogger(__name__)

Reply = Tuple[bytes, p.RanksDone]


@dataclass
class _Launch:
    key: int
    identity: bytes
    task_id: int
    client_task_id: int
    launch: int              # the requester's LaunchRanks.launch, echoed in the reply
    begun: float
    limit: Optional[float]   # seconds the ranks may take to start; None: no limit
    cancel: threading.Event = field(default_factory=threading.Event)  # stop the ranks
    started: bool = False
    answered: bool = False   # replied (or nobody to reply to): the outcome is dropped


def error_reply(task_id: int, launch: int, error: str) -> p.RanksDone:
    return p.RanksDone(task_id=task_id, exit_codes=[], labels=[], error=error, launch=launch)


class RankLaunches:
    """In-flight launches, their replies, and the pipe that wakes the service loop."""

    def __init__(self, backend, start_timeout_ms: int = DEFAULT_RANK_STARTUP_TIMEOUT_MS,
                 per_rank_ms: int = RANK_STARTUP_MS_PER_RANK) -> None:
        self.backend = backend
        self.start_timeout_ms = start_timeout_ms
        self.per_rank_ms = per_rank_ms
        self._launches: Dict[int, _Launch] = {}
        self._done: "queue.Queue[Tuple[int, RankOutcome, str]]" = queue.Queue()
        self._next = 0
        self.wakeup, self._wake_fd = os.pipe()  # read end: poll it; a byte means "look at finished()"
        os.set_blocking(self.wakeup, False)
        os.set_blocking(self._wake_fd, False)
        self._pipe_lock = threading.Lock()  # no write to the pipe once close() has freed its fds
        self._closed = False

    def start(self, identity: bytes, job: RankJob, client_task_id: int, launch: int = 0) -> None:
        self._next += 1
        entry = _Launch(self._next, identity, job.task_id, client_task_id, launch, time.monotonic(),
                        self.start_limit(len(job.hosts) * job.ranks_per_node))
        self._launches[entry.key] = entry
        logger.info("Launching ranks of task %d (client task %d, launch %d): %s on %s, pmi=%s", job.task_id,
                    client_task_id, launch, job.argv, job.hosts, job.pmi)
        threading.Thread(target=self._run, args=(entry, job), daemon=True,
                         name=f"ranks-{job.task_id}-{entry.key}").start()

    def request(self, identity: bytes, message: p.LaunchRanks, task: Optional[Task], output_root: str,
                accelerators: Optional[Accelerators] = None) -> Optional[p.RanksDone]:
        """Start the ranks a worker's rank link asks for (output under ``output_root/ranks``);
        the error reply to send back instead when they cannot start."""
        refused = refusal(message, task)
        if refused is not None or task is None:
            return refused
        output_dir = os.path.join(output_root, "ranks", f"task-{message.task_id}-{self._next + 1}")
        self.start(identity, job_from(message, task.spec, task.placement, output_dir, accelerators),
                   task.client_task_id, message.launch)
        return None

    def start_limit(self, ranks: int) -> Optional[float]:
        """Seconds a launch of ``ranks`` ranks may take to start: base + per-rank allowance."""
        if self.start_timeout_ms == NO_LIMIT:
            return None
        return (self.start_timeout_ms + self.per_rank_ms * ranks) / 1000.0

    def _run(self, launch: _Launch, job: RankJob) -> None:
        def on_started() -> None:
            launch.started = True
        try:
            outcome = self.backend.run_ranks(job, on_started, launch.cancel)
        except Exception as exc:  # anything from Dragon: report, never kill the server
            logger.exception("Launch of task %d's ranks failed", job.task_id)
            outcome = RankOutcome([], [], error=f"launching the ranks failed: {exc!r}")
        self._done.put((launch.key, outcome, job.output_dir))
        self._wake()

    def _wake(self) -> None:
        """Wake the service loop (any thread; a full pipe already means it will wake)."""
        with self._pipe_lock:
            if self._closed:
                return
            try:
                os.write(self._wake_fd, b"\0")
            except OSError:  # BlockingIOError: full, so the loop wakes anyway
                pass

    def finished(self) -> List[Reply]:
        """Replies to send now: completed launches, and launches that never started."""
        self._drain_wakeups()
        replies = []
        while True:
            try:
                key, outcome, output_dir = self._done.get_nowait()
            except queue.Empty:
                break
            launch = self._launches.pop(key, None)
            if launch is not None and not launch.answered:
                replies.append((launch.identity, p.RanksDone(
                    task_id=launch.task_id, exit_codes=list(outcome.exit_codes), labels=list(outcome.labels),
                    output_dir=output_dir, error=outcome.error, launch=launch.launch)))
        replies.extend(self._overdue())
        return replies

    def _drain_wakeups(self) -> None:
        with self._pipe_lock:
            try:
                while not self._closed and os.read(self.wakeup, 4096):
                    pass
            except OSError:  # BlockingIOError: empty
                pass

    def _overdue(self) -> List[Reply]:
        now = time.monotonic()
        replies = []
        for launch in self._launches.values():
            if launch.started or launch.answered or launch.limit is None or now - launch.begun <= launch.limit:
                continue
            launch.answered = True
            launch.cancel.set()  # should the ranks start after all, they are stopped at once
            logger.error("Ranks of task %d did not start within %.1fs; abandoning the launch",
                         launch.task_id, launch.limit)
            replies.append((launch.identity, error_reply(
                launch.task_id, launch.launch,
                f"the ranks did not start within {launch.limit:.1f}s (PMI wire-up hung, or a slow start: raise "
                "rank_startup_timeout_ms / PARSL_DRAGON_RANK_STARTUP_TIMEOUT); the launch was abandoned")))
        return replies

    def cancel_task(self, task_id: int, why: str = "") -> List[Reply]:
        """Stop the ranks of ``task_id``'s launches still running. Without ``why`` (the task ended,
        or its worker is gone) nothing more is answered for them; with ``why`` (someone still
        waits: the task's client left while the task runs) each is answered with that error."""
        replies = []
        for launch in self._launches.values():
            if launch.task_id != task_id or launch.cancel.is_set():
                continue
            launch.cancel.set()
            logger.info("Stopping the ranks of task %d (launch %d)%s", task_id, launch.launch,
                        f": {why}" if why else ": the task is over")
            if why and not launch.answered:
                replies.append((launch.identity, error_reply(task_id, launch.launch, why)))
            launch.answered = True
        return replies

    def running(self) -> int:
        return sum(1 for launch in self._launches.values() if not launch.answered)

    def close(self) -> None:
        """Stop every launch's ranks (the server is stopping) and close the wake-up pipe."""
        for launch in self._launches.values():
            launch.answered = True
            launch.cancel.set()
        with self._pipe_lock:
            if not self._closed:
                self._closed = True
                os.close(self.wakeup)
                os.close(self._wake_fd)


def refusal(message: p.LaunchRanks, task: Optional[Task]) -> Optional[p.RanksDone]:
    """The error reply for a launch the server does not start, or None to start it."""
    if task is None or task.placement is None or not task.spec.is_mpi:
        error = f"no running MPI task {message.task_id} on this server"
    elif task.spec.pmi == "mpiexec":
        error = MPIEXEC_REFUSED
    else:
        return None
    return error_reply(message.task_id, message.launch, error)


def job_from(message: p.LaunchRanks, spec: TaskSpec, placement: Placement, output_dir: str,
             accelerators: Optional[Accelerators] = None) -> RankJob:
    """The RankJob for a LaunchRanks request of an MPI task with this spec and placement; its
    GPU numbers become the ids of ``accelerators`` (``available_accelerators``)."""
    assert spec.pmi is not None, "only MPI tasks have a placement"
    return RankJob(
        task_id=message.task_id, argv=list(message.argv), cwd=message.cwd, env=dict(message.env),
        hosts=list(placement.hosts), ranks_per_node=spec.ranks_per_node, pmi=spec.pmi,
        cores=[list(ids) for ids in placement.cores], gpus=[device_ids(ids, accelerators) for ids in placement.gpus],
        cpus_per_rank=spec.cpus_per_rank, gpus_per_rank=spec.gpus_per_rank, cpu_bind=spec.cpu_bind,
        launcher_options=spec.launcher_options,
        walltime=None if spec.walltime is None else float(spec.walltime), output_dir=output_dir)
