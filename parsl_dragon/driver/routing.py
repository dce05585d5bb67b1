"""Which server gets which task: the executor's queue of waiting tasks and each server's window.

Pure bookkeeping (no sockets, no threads, no dragon): ``DragonExecutor`` calls a
:class:`TaskRouter` with its lock held and hands the returned :class:`Send` records to its client.

* A server holds at most ``workers + prefetch`` tasks (HTEX's ``prefetch_capacity``);
  a server that said it is stopping takes none.
* A submitted task goes straight to the least loaded server that fits it (its nodes can
  hold the placement) and has room. Otherwise it waits in one queue, oldest first. A task
  whose arguments hold kept results goes only to their server while it is connected.
* The queue drains whenever room appears: a result batch, a new server. A waiting task
  whose servers are all full does not hold back tasks behind it that fit elsewhere, and
  it is first in line for the next room on its servers, so nothing starves.
* A task too large for every connected server fails at submit; one submitted before any
  server was known fails when a server connects and it fits none of them.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Deque, Dict, List, NamedTuple, Optional, Set, Tuple

from parsl.executors.errors import InvalidResourceSpecification

from parsl_dragon.core.placement import NodeSlots
from parsl_dragon.core.spec import TaskSpec, check_fits

if TYPE_CHECKING:  # the router itself needs no sockets
    from parsl_dragon.driver.links import ServerLink


class Send(NamedTuple):
    """One task to hand to one server's link."""

    server_id: str
    task_id: int
    spec: TaskSpec
    payload: bytes


@dataclass
class RoutedServer:
    """A connected server as the router sees it: its session, block, nodes and tasks in flight."""

    link: "ServerLink"
    block_id: Optional[str]
    prefetch: int = 0
    tasks: Set[int] = field(default_factory=set)
    nodes: List[NodeSlots] = field(default_factory=list)  # from the Welcome, for size checks

    def __post_init__(self) -> None:
        welcome = self.link.welcome
        self.nodes = [NodeSlots(h, c, g) for h, c, g in zip(welcome.nodes, welcome.cores, welcome.gpus)]

    @property
    def server_id(self) -> str:
        return self.link.server_id

    @property
    def has_room(self) -> bool:
        """Takes another task: fewer than workers + prefetch in flight, and not stopping."""
        return not self.link.stopping and len(self.tasks) < max(1, self.link.welcome.workers) + self.prefetch

    @property
    def load(self) -> float:
        return len(self.tasks) / max(1, self.link.welcome.workers)


_Held = Tuple[int, TaskSpec, bytes, Optional[str]]  # task id, spec, payload, home server


class TaskRouter:
    """The servers, their windows and the queue of tasks waiting for room."""

    def __init__(self, prefetch: int) -> None:
        self.prefetch = prefetch
        self.servers: Dict[str, RoutedServer] = {}
        self.pending: Deque[_Held] = deque()

    def fitting(self, spec: TaskSpec, home: Optional[str] = None) -> List[RoutedServer]:
        """Servers (not stopping) whose nodes can hold the task, only ``home`` if it is connected
        (it holds the task's kept inputs); InvalidResourceSpecification if there are servers and
        none can. No server at all: an empty list."""
        servers = [s for s in self.servers.values() if not s.link.stopping]
        if home is not None and any(s.server_id == home for s in servers):
            servers = [s for s in servers if s.server_id == home]
        fitting, error = [], None
        for server in servers:
            try:
                check_fits(spec, server.nodes)
                fitting.append(server)
            except InvalidResourceSpecification as exc:
                error = exc
        if servers and not fitting and error is not None:
            raise error
        return fitting

    def submit(self, task_id: int, spec: TaskSpec, payload: bytes, home: Optional[str] = None) -> List[Send]:
        """Route a new task (to ``home``, the server holding its kept inputs, while it is connected);
        raises InvalidResourceSpecification (changing nothing) if it fits no server."""
        roomy = [s for s in self.fitting(spec, home) if s.has_room]
        if roomy and not self.pending:  # the common case: one size check, straight out
            return [self._send(min(roomy, key=lambda s: s.load), task_id, spec, payload)]
        self.pending.append((task_id, spec, payload, home))
        return self.drain()

    def add(self, link: "ServerLink", block_id: Optional[str]
            ) -> Tuple[List[Send], List[Tuple[int, InvalidResourceSpecification]]]:
        """A server connected: waiting tasks that fit none of the servers now fail
        (returned with their errors); the rest drain."""
        self.servers[link.server_id] = RoutedServer(link, block_id, self.prefetch)
        kept: Deque[_Held] = deque()
        misfits = []
        for entry in self.pending:
            try:
                self.fitting(entry[1])
                kept.append(entry)
            except InvalidResourceSpecification as exc:
                misfits.append((entry[0], exc))
        self.pending = kept
        return self.drain(), misfits

    def remove(self, server_id: str) -> Optional[RoutedServer]:
        """Forget a server (lost, stopped, detached); its tasks in flight are the caller's to fail."""
        return self.servers.pop(server_id, None)

    def in_flight(self, server_id: str, task_ids: List[int]) -> Set[int]:
        """Which of ``task_ids`` were routed to ``server_id`` and are still out there: a server's
        word counts only for its own tasks."""
        server = self.servers.get(server_id)
        return set() if server is None else server.tasks.intersection(task_ids)

    def finished(self, server_id: str, task_ids: List[int]) -> List[Send]:
        """Tasks came back from a server: free their room and drain into it."""
        server = self.servers.get(server_id)
        if server is not None:
            server.tasks.difference_update(task_ids)
        return self.drain() if self.pending else []

    def drain(self) -> List[Send]:
        """Send waiting tasks, oldest first, each to the least loaded server that fits it and
        has room; stops as soon as no server has room."""
        sends: List[Send] = []
        kept: Deque[_Held] = deque()
        while self.pending and any(s.has_room for s in self.servers.values()):
            task_id, spec, payload, home = entry = self.pending.popleft()
            try:
                roomy = [s for s in self.fitting(spec, home) if s.has_room]
            except InvalidResourceSpecification:
                roomy = []  # fits none of the servers there are now: wait for another block
            if roomy:
                sends.append(self._send(min(roomy, key=lambda s: s.load), task_id, spec, payload))
            else:
                kept.append(entry)
        self.pending.extendleft(reversed(kept))  # back in front, in order: O(kept), not O(queue)
        return sends

    def clear(self) -> None:
        self.pending.clear()

    @staticmethod
    def _send(server: RoutedServer, task_id: int, spec: TaskSpec, payload: bytes) -> Send:
        server.tasks.add(task_id)
        return Send(server.server_id, task_id, spec, payload)
