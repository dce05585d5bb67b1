"""The executor's tasks and their futures: where each task is, and what its outcome makes of its future.

:class:`TaskTable` keeps, behind one lock, each task's future (Parsl's ``executor._tasks``) and the
:class:`TaskRouter` that places it. It changes the table under the lock and resolves futures after
releasing it, so a done-callback may submit again::

    submit thread       submit()          -> future; routed tasks go to ``send`` (the client's outbox)
    block watchers      add_server()      -> waiting tasks drain into the new server, misfits fail
    result thread       on_results()      -> resolve(): the outcome of each task that server holds
                        take_server()     -> the server's futures, for the caller to fail
    shutdown            clear()           -> every future still open, for the caller to fail
    status reports      figures()         -> each server's block, workers and tasks, and the tasks waiting

How one ``TaskResult`` resolves a future::

    OK         payload = serialized value          -> future.set_result(value)
    KEPT       kept = where the value stays          -> future.set_result(a reference: driver/kept.py)
    EXCEPTION  payload = RemoteExceptionWrapper     -> future.set_exception(the task's exception)
    FAILED     error_type + error, no payload       -> future.set_exception(errors.failure(...))
    a payload that cannot be deserialized          -> DeserializationError on that future only
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from parsl.serialize import deserialize
from parsl.serialize.errors import DeserializationError

from parsl_dragon.driver.kept import KeptResults
from parsl_dragon.driver.links import ServerLink
from parsl_dragon.driver.routing import RoutedServer, Send, TaskRouter
from parsl_dragon.errors import failure
from parsl_dragon.task import codec
from parsl_dragon.wire import protocol as p

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockFigures:
    """One connected server as a status report sees it. ``in_flight`` is exact (the tasks this executor
    sent there and awaits); ``running`` and ``queued`` are the server's own figures as of its last
    heartbeat (``None`` before the first one)."""

    block_id: Optional[str]
    server_id: str
    host: str
    nodes: List[str]
    workers: int
    in_flight: int
    running: Optional[int]
    queued: Optional[int]


def set_exception(future: Future, exc: BaseException) -> None:
    """Fail ``future`` unless it is resolved already."""
    try:
        future.set_exception(exc)
    except InvalidStateError:
        pass


def resolve(future: Future, result: p.TaskResult, payload: bytes,
            reference: Callable[[p.TaskResult], Any] = lambda result: None) -> None:
    """Turn one TaskResult into the future's outcome, as HTEX does (a KEPT result: ``reference``)."""
    try:
        if result.status == p.OK:
            future.set_result(codec.decode(payload))  # Parsl's form, or the kept form of a result that travelled
        elif result.status == p.KEPT:
            future.set_result(reference(result))
        elif result.status == p.EXCEPTION:
            wrapper = deserialize(payload)
            try:
                wrapper.reraise()
            except BaseException as exc:  # a SystemExit re-raised from a task must not escape
                future.set_exception(exc)
        else:
            host = f" on host {result.host}" if result.host else ""
            future.set_exception(failure(result.error_type, f"{result.error_type}{host}: {result.error}"))
    except InvalidStateError:
        pass
    except BaseException as exc:  # e.g. unpickling that raises SystemExit: fail this future only
        set_exception(future, DeserializationError(f"result of task could not be deserialized: {exc!r}"))


class TaskTable:
    """Futures by task id and the router that places the tasks, behind one lock.

    ``futures`` is the executor's own task dict (Parsl reads it); ``send`` hands routed tasks
    to the client and is called with the lock held, so each server gets its tasks in order.
    """

    def __init__(self, futures: Dict[Any, Future], prefetch: int, send: Callable[[List[Send]], None],
                 kept: Optional[KeptResults] = None) -> None:
        self.futures = futures
        self.kept = kept
        self.router = TaskRouter(prefetch)
        self.lock = threading.RLock()
        self._send = send
        self._counter = 0

    @property
    def servers(self) -> List[RoutedServer]:
        return list(self.router.servers.values())

    def submit(self, spec: Any, payload: bytes, home: Optional[str] = None) -> Future:
        """A future for a new task, sent at once where a server has room (``home``'s, if it holds the
        task's kept inputs); raises (changing nothing) if the task fits no connected server."""
        future: Future = Future()
        with self.lock:
            task_id = self._counter + 1
            sends = self.router.submit(task_id, spec, payload, home)  # a request larger than every block fails here
            self._counter = task_id
            future.parsl_executor_task_id = task_id  # type: ignore[attr-defined]
            self.futures[task_id] = future
            self._send(sends)
        return future

    def add_server(self, link: ServerLink, block_id: Optional[str]) -> None:
        """Take a new server's session; waiting tasks drain into it, or fail if they fit no server."""
        with self.lock:
            sends, misfits = self.router.add(link, block_id)
            self._send(sends)
            failed = [(self.futures.pop(task_id, None), exc) for task_id, exc in misfits]
        for future, exc in failed:  # resolved outside the lock, like every other outcome
            if future is not None:
                set_exception(future, exc)

    def on_results(self, server_id: str, message: p.TaskResults) -> None:
        """Resolve the futures of tasks this server holds; an outcome for any other task id
        (never routed there, or already resolved) is dropped and logged."""
        with self.lock:
            ids = [result.task_id for result in message.results]
            mine = self.router.in_flight(server_id, ids)
            futures = [self.futures.pop(i, None) if i in mine else None for i in ids]
            self._send(self.router.finished(server_id, list(mine)))
        if len(mine) < len(ids):
            logger.warning("Ignored %d outcome(s) from server %s for tasks it does not hold: %s", len(ids) - len(mine),
                           server_id, [i for i in ids if i not in mine][:10])
        for future, result, payload in zip(futures, message.results, message.payloads):
            if result.unkept and self.kept is not None:
                self.kept.warn_unkept(result)
            if future is not None:
                resolve(future, result, payload, lambda r: self.kept.reference(server_id, r))  # type: ignore

    def take_server(self, server_id: str) -> Tuple[Optional[RoutedServer], List[Future]]:
        """Forget a server; return it (None if it was gone already) and the futures of its tasks."""
        with self.lock:
            server = self.router.remove(server_id)
            lost = [self.futures.pop(t) for t in sorted(server.tasks) if t in self.futures] if server else []
        return server, lost

    def block_tasks(self, block_id: str) -> Set[int]:
        """The tasks in flight at the servers of block ``block_id``."""
        with self.lock:
            return set().union(*[s.tasks for s in self.servers if s.block_id == block_id])

    def figures(self) -> Tuple[List[BlockFigures], int, int]:
        """Each connected server's figures, the tasks waiting here for room, and the tasks submitted so far."""
        with self.lock:
            blocks = [BlockFigures(s.block_id, s.server_id, s.link.welcome.host, list(s.link.welcome.nodes),
                                   s.link.load.workers if s.link.load else s.link.welcome.workers, len(s.tasks),
                                   s.link.load.running if s.link.load else None,
                                   s.link.load.queued if s.link.load else None) for s in self.servers]
            return blocks, len(self.router.pending), self._counter

    def block_of(self, server_id: str) -> Optional[str]:
        """The block of a connected server (``None`` for a shared server or one gone)."""
        server = self.router.servers.get(server_id)
        return server.block_id if server is not None else None

    def has_server(self, block_id: str) -> bool:
        return any(s.block_id == block_id for s in self.servers)

    def clear(self) -> List[Future]:
        """Forget every task and server; return the futures still open."""
        with self.lock:
            left = list(self.futures.values())
            self.futures.clear()
            self.router.clear()
        return left
