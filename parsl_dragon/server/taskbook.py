"""The server's book of tasks: whose each task is, where it went, and what to tell whom.

Pure (no sockets, no Dragon): the service loop asks it and sends what it returns. A task is
known by the server's own id (unique across clients); its client knows it by the client's
task id. A result is taken only from the worker the task was sent to.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Set

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.scheduler import Assignment
from parsl_dragon.core.spec import TaskSpec
from parsl_dragon.wire import protocol as p

logger = logging.getLogger(__name__)


@dataclass
class Task:
    """One task the server holds, from submission until its result is routed (or it fails)."""

    client: bytes            # the client link's identity
    client_task_id: int
    spec: TaskSpec
    payload: bytes           # emptied once a worker has it (memory stays bounded)
    placement: Optional[Placement] = None  # set for an MPI or GPU task once it is assigned
    worker: str = ""         # the worker it was sent to: only that worker's result is taken


@dataclass
class Routed:
    """What to do with a batch of results from one worker."""

    to_clients: Dict[bytes, p.TaskResults] = field(default_factory=dict)
    finished: List[int] = field(default_factory=list)    # server ids whose slots are free again
    unroutable: List[int] = field(default_factory=list)  # unknown id, duplicate, or client gone


class TaskBook:
    """Tasks by server id."""

    def __init__(self) -> None:
        self._tasks: Dict[int, Task] = {}
        self._last_id = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._tasks))

    def get(self, task_id: int) -> Optional[Task]:
        return self._tasks.get(task_id)

    def next_id(self) -> int:
        """A new server task id (ids are never reused, also for refused tasks)."""
        self._last_id += 1
        return self._last_id

    def add(self, task_id: int, task: Task) -> None:
        self._tasks[task_id] = task

    def client_task_ids(self, client: bytes) -> Set[int]:
        """The client's ids of every task this server holds for ``client``."""
        return {t.client_task_id for t in self._tasks.values() if t.client == client}

    def of_client(self, client: bytes) -> List[int]:
        """Server ids of ``client``'s tasks."""
        return [task_id for task_id, t in self._tasks.items() if t.client == client]

    def sent_to(self, worker_id: str) -> List[int]:
        """Server ids of the tasks out at ``worker_id``, in order."""
        return sorted(task_id for task_id, t in self._tasks.items() if t.worker == worker_id)

    def held_by(self, worker_id: str, task_ids: Iterable[int]) -> List[int]:
        """Those of ``task_ids`` out at ``worker_id`` (a worker speaks only for its own tasks)."""
        return [task_id for task_id in task_ids
                if type(task_id) is int and task_id in self._tasks and self._tasks[task_id].worker == worker_id]

    def discard(self, task_ids: Iterable[int]) -> None:
        for task_id in task_ids:
            self._tasks.pop(task_id, None)

    def take_by_client(self, task_ids: Iterable[int]) -> Dict[bytes, List[int]]:
        """Remove these tasks; their client ids grouped by client (to fail them)."""
        by_client: Dict[bytes, List[int]] = {}
        for task_id in task_ids:
            task = self._tasks.pop(task_id, None)
            if task is not None:
                by_client.setdefault(task.client, []).append(task.client_task_id)
        return by_client

    def take_all(self) -> Dict[bytes, List[int]]:
        """Remove every task; client ids grouped by client."""
        return self.take_by_client(list(self._tasks))

    def batches(self, assignments: Iterable[Assignment]) -> Dict[str, p.SubmitTasks]:
        """The ``SubmitTasks`` per worker for these assignments; records where each task went."""
        batches: Dict[str, p.SubmitTasks] = {}
        for assignment in assignments:
            task = self._tasks.get(assignment.task_id)
            if task is None:
                continue
            task.placement = assignment.placement
            task.worker = assignment.worker_id
            batch = batches.setdefault(assignment.worker_id, p.SubmitTasks(tasks=[]))
            batch.tasks.append(p.TaskEntry(task_id=assignment.task_id, spec=task.spec, placement=task.placement))
            batch.payloads.append(task.payload)
            task.payload = b""
        return batches

    def route(self, worker_id: str, message: p.TaskResults, clients: Iterable[bytes]) -> Routed:
        """Match a worker's results to their clients (renumbered to the client's ids)."""
        live = set(clients)
        routed = Routed()
        for result, payload in zip(message.results, message.payloads):
            task = self._tasks.get(result.task_id)
            if task is not None and task.worker != worker_id:
                logger.warning("Dropped a result for task %d from worker %s: it was sent to %s",
                               result.task_id, worker_id, task.worker or "no worker")
                continue
            self._tasks.pop(result.task_id, None)
            routed.finished.append(result.task_id)
            if task is None or task.client not in live:
                routed.unroutable.append(result.task_id)
                continue
            batch = routed.to_clients.setdefault(task.client, p.TaskResults(results=[]))
            result.task_id = task.client_task_id
            batch.results.append(result)
            batch.payloads.append(payload)
        return routed
