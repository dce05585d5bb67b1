"""Pure task-to-worker scheduling: events in, dispatch actions out. No I/O.

The server feeds it events (a worker appeared or was lost, a task arrived or
finished) and sends whatever :class:`Dispatch` actions come back. Each worker
holds at most ``1 + prefetch`` tasks: one running, the rest queued locally so a
worker never waits a network round trip between short tasks. Pending tasks are
handed out first come, first served, spread over the least-loaded workers.

This module imports neither zmq nor dragon, so it is tested without sockets.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Set, Tuple


@dataclass(frozen=True)
class Dispatch:
    """Send these tasks (internal ids) to this worker."""

    worker_id: str
    task_ids: List[int]


@dataclass
class _Worker:
    worker_id: str
    host: str
    tasks: Set[int] = field(default_factory=set)


class TaskScheduler:
    """Tracks workers, their in-flight tasks and the pending queue."""

    def __init__(self, prefetch: int = 0) -> None:
        if prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        self.capacity_per_worker = 1 + prefetch
        self._workers: Dict[str, _Worker] = {}
        # workers with spare capacity, bucketed by load (_free[n]: workers holding n tasks);
        # each bucket is in round-robin order
        self._free: List["OrderedDict[str, None]"] = [OrderedDict() for _ in range(self.capacity_per_worker)]
        self._pending: Deque[int] = deque()
        self._placed: Dict[int, str] = {}  # task -> worker

    # ---- queries -------------------------------------------------------
    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def running(self) -> int:
        return len(self._placed)

    @property
    def queued(self) -> int:
        return len(self._pending)

    def host_of(self, task_id: int) -> str:
        """Host of the worker running ``task_id`` ('' if it is not placed)."""
        worker = self._workers.get(self._placed.get(task_id, ""))
        return worker.host if worker else ""

    def worker_hosts(self) -> Dict[str, str]:
        return {w.worker_id: w.host for w in self._workers.values()}

    # ---- events --------------------------------------------------------
    def add_worker(self, worker_id: str, host: str) -> Tuple[List[int], List[Dispatch]]:
        """A worker (re)announced itself. Tasks it held before a restart are returned as lost."""
        lost = self._forget(worker_id)
        self._workers[worker_id] = _Worker(worker_id, host)
        self._free[0][worker_id] = None
        return lost, self._fill()

    def remove_worker(self, worker_id: str) -> Tuple[List[int], List[Dispatch]]:
        """A worker died: return the tasks it held (lost) and new dispatches for the others."""
        lost = self._forget(worker_id)
        return lost, self._fill()

    def submit(self, task_ids: List[int]) -> List[Dispatch]:
        self._pending.extend(task_ids)
        return self._fill()

    def complete(self, task_ids: List[int]) -> List[Dispatch]:
        """Tasks finished (any outcome); their slots free up."""
        for task_id in task_ids:
            worker_id = self._placed.pop(task_id, None)
            worker = self._workers.get(worker_id or "")
            if worker is not None and task_id in worker.tasks:
                self._unmark_free(worker)
                worker.tasks.discard(task_id)
                self._mark_free(worker)
        return self._fill()

    def cancel(self, task_ids: Set[int]) -> List[int]:
        """Drop tasks that have not started; return the ids that were still pending."""
        kept: Deque[int] = deque()
        dropped = []
        for task_id in self._pending:
            (dropped if task_id in task_ids else kept).append(task_id)
        self._pending = kept
        return dropped

    # ---- internals -----------------------------------------------------
    def _forget(self, worker_id: str) -> List[int]:
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return []
        self._unmark_free(worker)
        for task_id in worker.tasks:
            self._placed.pop(task_id, None)
        return sorted(worker.tasks)

    def _fill(self) -> List[Dispatch]:
        batches: Dict[str, List[int]] = {}
        while self._pending:
            least_loaded = next((bucket for bucket in self._free if bucket), None)
            if least_loaded is None:
                break
            worker_id, _ = least_loaded.popitem(last=False)
            worker = self._workers[worker_id]
            task_id = self._pending.popleft()
            worker.tasks.add(task_id)
            self._placed[task_id] = worker_id
            batches.setdefault(worker_id, []).append(task_id)
            self._mark_free(worker)  # back of the next bucket's line: spread tasks round robin
        return [Dispatch(w, ids) for w, ids in batches.items()]

    def _mark_free(self, worker: _Worker) -> None:
        if len(worker.tasks) < self.capacity_per_worker:
            self._free[len(worker.tasks)][worker.worker_id] = None

    def _unmark_free(self, worker: _Worker) -> None:
        if len(worker.tasks) < self.capacity_per_worker:
            self._free[len(worker.tasks)].pop(worker.worker_id, None)
