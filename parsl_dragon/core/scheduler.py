"""Pure server-side scheduling: which worker runs which task, on which cores. No I/O.

Two layers, both pure:

* :class:`~parsl_dragon.core.placement.SlotTable` decides *where* a task may start (cores and
  GPUs per node, priority queue, backfill without starvation);
* :class:`TaskScheduler` (this module) adds the persistent workers: each task runs on an
  idle worker of its first host (for an MPI task that worker runs the app, which launches
  the ranks), and the slot table is told how many workers each node has ready.

The server feeds events in (worker ready / lost, task submitted / finished / cancelled)
and sends the :class:`Assignment` actions that come back::

    >>> s = TaskScheduler([NodeSlots("n1", cores=2)])
    >>> s.worker_ready("w1", "n1")
    []
    >>> s.submit(1, TaskSpec())
    [Assignment(worker_id='w1', task_id=1, placement=None)]
    >>> s.submit(2, TaskSpec())    # the only worker is busy: queued
    []
    >>> s.finished(1)
    [Assignment(worker_id='w1', task_id=2, placement=None)]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

from parsl_dragon.core.placement import NodeSlots, Placement, SlotTable
from parsl_dragon.core.spec import TaskSpec, check_fits, request_for


@dataclass(frozen=True)
class Assignment:
    """Send task ``task_id`` to ``worker_id``; ``placement`` is set for MPI tasks and tasks with GPUs
    (the worker binds the task to its devices), None otherwise."""

    worker_id: str
    task_id: int
    placement: Optional[Placement] = None


@dataclass
class _Host:
    idle: List[str] = field(default_factory=list)
    ready: Set[str] = field(default_factory=set)


class TaskScheduler:
    """Workers per host, the slot table, and which worker holds which task."""

    def __init__(self, nodes: Iterable[NodeSlots], max_bypass: int = 16) -> None:
        nodes = [NodeSlots(n.hostname, n.cores, n.gpus, workers=0) for n in nodes]
        self.table = SlotTable(nodes, max_bypass=max_bypass)
        self._hosts: Dict[str, _Host] = {n.hostname: _Host() for n in nodes}
        self._worker_host: Dict[str, str] = {}
        self._worker_task: Dict[str, int] = {}
        self._task_worker: Dict[int, str] = {}
        self._placed: Set[int] = set()  # tasks whose placement goes to their worker

    # ---- queries -------------------------------------------------------
    @property
    def workers(self) -> int:
        return len(self._worker_host)

    @property
    def running(self) -> int:
        return len(self._task_worker)

    @property
    def queued(self) -> int:
        return self.table.queued

    @property
    def nodes(self) -> Tuple[NodeSlots, ...]:
        return self.table.nodes

    def host_of_worker(self, worker_id: str) -> str:
        return self._worker_host.get(worker_id, "")

    def worker_ids(self) -> List[str]:
        return list(self._worker_host)

    # ---- events --------------------------------------------------------
    def worker_ready(self, worker_id: str, host: str) -> List[Assignment]:
        """A worker announced itself; it may start queued tasks."""
        if host not in self._hosts:
            raise KeyError(f"worker {worker_id} on unknown host {host!r}")
        self._worker_host[worker_id] = host
        state = self._hosts[host]
        state.ready.add(worker_id)
        state.idle.append(worker_id)
        return self._assign(self.table.set_workers(host, len(state.ready)))

    def worker_lost(self, worker_id: str) -> Tuple[Optional[int], List[Assignment]]:
        """A worker died: the task it held (if any) is lost; its slots free up."""
        host = self._worker_host.pop(worker_id, None)
        if host is None:
            return None, []
        state = self._hosts[host]
        state.ready.discard(worker_id)
        if worker_id in state.idle:
            state.idle.remove(worker_id)
        lost = self._worker_task.pop(worker_id, None)
        started: List[Placement] = []
        if lost is not None:
            self._task_worker.pop(lost, None)
            self._placed.discard(lost)
            started += self.table.release(lost)
        started += self.table.set_workers(host, len(state.ready))
        return lost, self._assign(started)

    def submit(self, task_id: int, spec: TaskSpec) -> List[Assignment]:
        """Queue a task; InvalidResourceSpecification if it can never run on these nodes. Whether a
        shape fits is the table's, cached per shape: a scan of every node per task cost 0.14 us per
        node (benchmarks/scale.py, 2,000 nodes); only a misfit scans them, to name the keys."""
        request = request_for(task_id, spec)
        if not self.table.fits(request.shape):
            check_fits(spec, self.table.nodes)  # raises, naming what does not fit
        if spec.is_mpi or spec.gpus_per_rank:
            self._placed.add(task_id)
        return self._assign(self.table.submit(request))

    def finished(self, task_id: int) -> List[Assignment]:
        """A task ended (any outcome), or its worker released its slot to store its result: its
        worker is idle again (unless it retires) and its slots are free. Again for the same task
        (its result after the release): nothing more to free."""
        worker_id = self._task_worker.pop(task_id, None)
        self._placed.discard(task_id)
        if worker_id is not None:
            self._worker_task.pop(worker_id, None)
            host = self._worker_host.get(worker_id)
            if host is not None and worker_id in self._hosts[host].ready:
                self._hosts[host].idle.append(worker_id)
            elif host is not None:  # retired: it leaves with its last task
                del self._worker_host[worker_id]
        return self._assign(self.table.release(task_id))

    def retire(self, worker_id: str) -> List[Assignment]:
        """The worker takes no new task; it leaves once its current one is :meth:`finished`."""
        host = self._worker_host.get(worker_id)
        if host is None:
            return []
        state = self._hosts[host]
        state.ready.discard(worker_id)
        if worker_id in state.idle:
            state.idle.remove(worker_id)
        if worker_id not in self._worker_task:
            del self._worker_host[worker_id]
        return self._assign(self.table.set_workers(host, len(state.ready)))

    def cancel(self, task_ids: Iterable[int]) -> Tuple[List[int], List[Assignment]]:
        """Drop queued tasks; return the dropped ids and what can start instead."""
        cancellation = self.table.cancel(task_ids)
        for task_id in cancellation.dropped:
            self._placed.discard(task_id)
        return cancellation.dropped, self._assign(cancellation.started)

    # ---- internals -----------------------------------------------------
    def _assign(self, placements: List[Placement]) -> List[Assignment]:
        assignments = []
        for placement in placements:
            state = self._hosts[placement.hosts[0]]
            worker_id = state.idle.pop(0)  # the slot table never starts more tasks than ready workers
            self._worker_task[worker_id] = placement.task_id
            self._task_worker[placement.task_id] = worker_id
            detail = placement if placement.task_id in self._placed else None
            assignments.append(Assignment(worker_id, placement.task_id, detail))
        return assignments
