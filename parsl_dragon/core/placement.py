"""Pure slot-table scheduler: which cores, GPUs and workers each task gets. No I/O.

The server owns one :class:`SlotTable` per allocation and feeds it events; every
event method returns the actions that follow from it (placements to launch, tasks
dropped). It imports neither zmq nor dragon. A :class:`Placement` travels from the
server to the task's worker in its wire form (:meth:`Placement.to_wire`).

Model
-----
* A node (:class:`NodeSlots`) has ``cores`` core ids ``0..cores-1``, ``gpus`` GPU
  ids and ``workers`` persistent Python workers.
* A task (:class:`Request`) needs ``num_nodes`` distinct nodes and, on each,
  ``ranks_per_node * cpus_per_rank`` cores and ``ranks_per_node * gpus_per_rank``
  GPUs. A serial task is the default request: 1 node, 1 rank, 1 core.
* Every task also holds one worker on its *first* node while it runs (the worker
  runs the app; for MPI tasks it is the launcher waiting on the ranks), so at most
  ``workers`` tasks have their first node on a given node.

Policy
------
* Queue order: lower ``priority`` value first (HTEX's meaning; unset = last), then arrival.
* On every event tasks are tried in queue order. Nodes are chosen best fit (fewest
  free cores that still fit), so small tasks pack together and whole nodes stay
  free for big ones; the first node is one with an idle worker.
* Backfill: a task that does not fit may be passed by later tasks that do. Each
  such start counts as one bypass of the first blocked task. Once a task has been
  bypassed ``max_bypass`` times it is *reserved*: nothing behind it starts until it
  has started, so running tasks drain for it and it cannot starve (a stream of
  tasks with a *more urgent* priority still goes first: that is what priority means).
* Work per event is proportional to what changes: nodes are indexed by free cores,
  and queued tasks are grouped into lanes of equal shape (when the head of a lane
  does not fit, nothing else in that lane can fit during the same pass).

Example (2 nodes x 8 cores, 3 workers each, ``max_bypass=1``)::

    event                           action             n1 cores   n2 cores  queue
    submit A(1 node x 6 ranks)      start A on n1       AAAAAA..   ........  -
    submit B(1 node x 8 ranks)      start B on n2       AAAAAA..   BBBBBBBB  -
    submit C(1 node x 8 ranks)      (waits)             AAAAAA..   BBBBBBBB  C
    submit D(serial)                start D (backfill)  AAAAAAD.   BBBBBBBB  C (bypassed 1: reserved)
    submit E(serial)                (waits behind C)    AAAAAAD.   BBBBBBBB  C E
    release B                       start C on n2       AAAAAAD.   CCCCCCCC  E
                                    start E on n1       AAAAAADE   CCCCCCCC  -

    >>> table = SlotTable([NodeSlots("n1", 8, workers=3), NodeSlots("n2", 8, workers=3)], max_bypass=1)
    >>> [p.hosts for p in table.submit(Request(1, ranks_per_node=6))]
    [('n1',)]
"""
from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass
from reprlib import repr as _show  # bounded: a placement may come from the wire
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

Shape = Tuple[int, int, int]  # (num_nodes, cores per node, gpus per node)


def _check_int(name: str, value: object, minimum: Optional[int]) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class NodeSlots:
    """What one node offers: core count, GPU count and persistent Python workers."""

    hostname: str
    cores: int
    gpus: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.hostname, str) or not self.hostname:
            raise ValueError(f"hostname must be a non-empty str, got {self.hostname!r}")
        _check_int("cores", self.cores, 1)
        _check_int("gpus", self.gpus, 0)
        _check_int("workers", self.workers, 0)


@dataclass(frozen=True)
class Request:
    """What one task needs; the defaults describe a serial task."""

    task_id: int
    num_nodes: int = 1
    ranks_per_node: int = 1
    cpus_per_rank: int = 1
    gpus_per_rank: int = 0
    priority: float = math.inf  # lower runs first, as in HTEX; unset runs after every set value

    def __post_init__(self) -> None:
        _check_int("task_id", self.task_id, None)
        for name in ("num_nodes", "ranks_per_node", "cpus_per_rank"):
            _check_int(name, getattr(self, name), 1)
        _check_int("gpus_per_rank", self.gpus_per_rank, 0)
        if isinstance(self.priority, bool) or not isinstance(self.priority, (int, float)) \
                or math.isnan(self.priority):
            raise ValueError(f"priority must be a number, got {self.priority!r}")

    @property
    def shape(self) -> Shape:
        """``(num_nodes, cores per node, gpus per node)``: what placement depends on."""
        rpn = self.ranks_per_node
        return (self.num_nodes, rpn * self.cpus_per_rank, rpn * self.gpus_per_rank)


@dataclass(frozen=True)
class Placement:
    """Where a task runs: ``hosts[0]`` is the node whose worker runs the task.

    ``cores[i]`` / ``gpus[i]`` are the ids reserved on ``hosts[i]``: ``ranks_per_node``
    consecutive groups of ``cpus_per_rank`` cores (and ``gpus_per_rank`` GPUs), as the
    task's spec says. The slot table makes valid placements; :meth:`from_wire` checks one
    that arrives from elsewhere.
    """

    task_id: int
    hosts: Tuple[str, ...]
    cores: Tuple[Tuple[int, ...], ...]
    gpus: Tuple[Tuple[int, ...], ...]

    def to_wire(self) -> Dict[str, list]:
        """JSON-safe ``{"hosts": [...], "cores": [[...]], "gpus": [[...]]}``; the task id travels beside it."""
        return {"hosts": list(self.hosts), "cores": [list(c) for c in self.cores],
                "gpus": [list(g) for g in self.gpus]}

    @classmethod
    def from_wire(cls, task_id: int, data: Any) -> "Placement":
        """Check a wire form and rebuild the placement of task ``task_id``.

        Raises
        ------
        ValueError
            Naming the field: not exactly ``hosts``, ``cores`` and ``gpus``; no host, a host
            twice or not a name; not one list of distinct ids >= 0 per host, as many on every
            host (at least one core).
        """
        _check_int("task_id", task_id, None)
        if not isinstance(data, dict) or set(data) != {"hosts", "cores", "gpus"}:
            got = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"a placement must be an object of hosts, cores and gpus; got {got}")
        hosts = data["hosts"]
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts) \
                or len(set(hosts)) != len(hosts):
            raise ValueError(f"placement 'hosts' must be a non-empty list of distinct host names, got {_show(hosts)}")
        return cls(task_id, tuple(hosts), _id_lists("cores", data["cores"], len(hosts), 1),
                   _id_lists("gpus", data["gpus"], len(hosts), 0))


def _id_lists(name: str, value: Any, hosts: int, least: int) -> Tuple[Tuple[int, ...], ...]:
    """``value`` as one tuple of distinct ids >= 0 per host, as many (>= ``least``) on each."""
    if not isinstance(value, list) or len(value) != hosts or not all(isinstance(ids, list) for ids in value):
        raise ValueError(f"placement {name!r} must hold one list of ids per host ({hosts}), got {_show(value)}")
    for ids in value:
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids) \
                or len(set(ids)) != len(ids) or len(ids) < least or len(ids) != len(value[0]):
            raise ValueError(f"placement {name!r}: each host needs as many distinct ids >= 0 as the first "
                             f"(at least {least}), got {_show(value)}")
    return tuple(tuple(ids) for ids in value)


class Cancellation(NamedTuple):
    """Actions after cancelling tasks."""

    dropped: List[int]         # the ids that were queued (running ids are left alone)
    started: List[Placement]   # queued tasks that start now that the dropped ones are gone


@dataclass
class _Node:
    slots: NodeSlots
    free_cores: List[int]
    free_gpus: List[int]
    busy_workers: int = 0

    @property
    def has_idle_worker(self) -> bool:
        return self.busy_workers < self.slots.workers


@dataclass
class _Queued:
    request: Request
    seq: int
    bypassed: int = 0
    reserved: bool = False

    @property
    def key(self) -> Tuple[int, int]:
        return (self.request.priority, self.seq)


class _FreeIndex:
    """Hostnames bucketed by free cores, for best-fit search."""

    def __init__(self) -> None:
        self._buckets: List[Dict[str, None]] = []
        self.nonzero = 0  # hosts with at least one free core

    def add(self, host: str, free: int) -> None:
        while len(self._buckets) <= free:
            self._buckets.append({})
        self._buckets[free][host] = None
        self.nonzero += free > 0

    def discard(self, host: str, free: int) -> None:
        if free < len(self._buckets) and self._buckets[free].pop(host, 0) is None:
            self.nonzero -= free > 0

    def best_fit(self, nodes: Dict[str, _Node], cores: int, gpus: int, count: int,
                 exclude: str = "") -> Optional[List[str]]:
        """``count`` hosts with >= ``cores`` free cores and >= ``gpus`` free GPUs, fewest free first."""
        chosen: List[str] = []
        if count == 0:
            return chosen
        for free in range(cores, len(self._buckets)):
            for host in self._buckets[free]:
                if host != exclude and len(nodes[host].free_gpus) >= gpus:
                    chosen.append(host)
                    if len(chosen) == count:
                        return chosen
        return None


class SlotTable:
    """The allocation's cores, GPUs and workers, the running tasks and the wait queue.

    Parameters
    ----------
    nodes : iterable of NodeSlots
        The allocation's nodes (hostnames must be unique).
    max_bypass : int
        How many later tasks may start ahead of a blocked task before it is
        reserved (0: strict queue order, no backfill).
    """

    def __init__(self, nodes: Iterable[NodeSlots] = (), *, max_bypass: int = 16) -> None:
        _check_int("max_bypass", max_bypass, 0)
        self.max_bypass = max_bypass
        self._nodes: Dict[str, _Node] = {}
        self._all = _FreeIndex()           # every node
        self._with_worker = _FreeIndex()   # nodes with an idle worker (candidates for hosts[0])
        self._running: Dict[int, Placement] = {}
        self._queued: Dict[int, _Queued] = {}
        self._lanes: Dict[Shape, List[Tuple[int, int, int]]] = {}  # heaps of (priority, seq, task_id)
        self._seq = 0
        self._fits: Dict[Shape, bool] = {}  # _shape_fits cache (nodes change only here, in _add)
        for slots in nodes:
            self._add(slots)

    # ---- queries ---------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def nodes(self) -> Tuple[NodeSlots, ...]:
        return tuple(n.slots for n in self._nodes.values())

    # ---- events ----------------------------------------------------------
    def submit(self, request: Request) -> List[Placement]:
        """Queue a task; return the placements that start now (this task and/or others).

        Raises ``ValueError`` for a task id already queued or running, or a request that
        would not fit on the nodes even if they were empty (validate with
        ``parsl_dragon.core.spec.check_fits`` first).
        """
        tid = request.task_id
        if tid in self._queued or tid in self._running:
            raise ValueError(f"task {tid} is already queued or running")
        if not self._shape_fits(request.shape):
            raise ValueError(f"task {tid} needs {request.shape} (nodes, cores, gpus per node): never fits")
        self._seq += 1
        entry = _Queued(request, self._seq)
        self._queued[tid] = entry
        heapq.heappush(self._lanes.setdefault(request.shape, []), (*entry.key, tid))
        return self._schedule()

    def release(self, task_id: int) -> List[Placement]:
        """A running task finished: free its slots; return what starts now ([] if not running)."""
        placement = self._running.pop(task_id, None)
        if placement is None:
            return []
        self._free(placement)
        return self._schedule()

    def cancel(self, task_ids: Iterable[int]) -> Cancellation:
        """Drop the queued tasks among ``task_ids``; running ones are the caller's to stop and release."""
        dropped = [tid for tid in task_ids if self._queued.pop(tid, None) is not None]
        return Cancellation(dropped, self._schedule() if dropped else [])

    def set_workers(self, hostname: str, workers: int) -> List[Placement]:
        """Change a node's worker count (workers started or lost); running tasks keep theirs."""
        node = self._nodes[hostname]
        slots = dataclasses.replace(node.slots, workers=workers)  # validated before the node changes
        self._unindex(node)
        node.slots = slots
        self._index(node)
        return self._schedule()

    def fits(self, shape: Shape) -> bool:
        """Whether a task of ``shape`` (nodes, cores and GPUs per node) can ever run here; cached per shape."""
        return self._shape_fits(shape)

    # ---- internals: nodes -----------------------------------------------
    def _shape_fits(self, shape: Shape) -> bool:
        if shape not in self._fits:
            n, cores, gpus = shape
            able = sum(1 for x in self._nodes.values() if x.slots.cores >= cores and x.slots.gpus >= gpus)
            self._fits[shape] = able >= n
        return self._fits[shape]

    def _add(self, slots: NodeSlots) -> None:
        if slots.hostname in self._nodes:
            raise ValueError(f"node {slots.hostname!r} is already in the table")
        node = _Node(slots, list(range(slots.cores)), list(range(slots.gpus)))
        self._nodes[slots.hostname] = node
        self._index(node)
        self._fits.clear()

    def _index(self, node: _Node) -> None:
        host, free = node.slots.hostname, len(node.free_cores)
        self._all.add(host, free)
        if node.has_idle_worker:
            self._with_worker.add(host, free)

    def _unindex(self, node: _Node) -> None:
        host, free = node.slots.hostname, len(node.free_cores)
        self._all.discard(host, free)
        self._with_worker.discard(host, free)

    def _find_hosts(self, shape: Shape) -> Optional[List[str]]:
        n, cores, gpus = shape
        first = self._with_worker.best_fit(self._nodes, cores, gpus, 1)
        if first is None:
            return None
        rest = self._all.best_fit(self._nodes, cores, gpus, n - 1, exclude=first[0])
        return None if rest is None else first + rest

    def _allocate(self, request: Request, hosts: List[str]) -> Placement:
        _, ncores, ngpus = request.shape
        cores, gpus = [], []
        for i, host in enumerate(hosts):
            node = self._nodes[host]
            self._unindex(node)
            cores.append(tuple(node.free_cores[:ncores]))
            gpus.append(tuple(node.free_gpus[:ngpus]))
            del node.free_cores[:ncores], node.free_gpus[:ngpus]
            node.busy_workers += i == 0
            self._index(node)
        placement = Placement(request.task_id, tuple(hosts), tuple(cores), tuple(gpus))
        self._running[request.task_id] = placement
        return placement

    def _free(self, placement: Placement) -> None:
        for i, (host, cores, gpus) in enumerate(zip(placement.hosts, placement.cores, placement.gpus)):
            node = self._nodes[host]
            self._unindex(node)
            node.free_cores = sorted(node.free_cores + list(cores))
            node.free_gpus = sorted(node.free_gpus + list(gpus))
            node.busy_workers -= i == 0
            self._index(node)

    # ---- internals: queue ------------------------------------------------
    def _lane_head(self, shape: Shape) -> Optional[_Queued]:
        """The first live entry of a lane, discarding cancelled/started ones; drops empty lanes."""
        lane = self._lanes[shape]
        while lane:
            _, seq, tid = lane[0]
            entry = self._queued.get(tid)
            if entry is not None and entry.seq == seq:
                return entry
            heapq.heappop(lane)
        del self._lanes[shape]
        return None

    def _schedule(self) -> List[Placement]:
        """One pass over the queue in order: start what fits, count bypasses, honour reservations."""
        started: List[Placement] = []
        heap = []
        for shape in list(self._lanes):
            entry = self._lane_head(shape)
            if entry is not None:
                heap.append((entry.key, entry, shape))
        heapq.heapify(heap)
        blocked: Optional[_Queued] = None  # the first task this pass could not start
        while heap and self._with_worker.nonzero:
            entry, shape = heapq.heappop(heap)[1:]
            hosts = self._find_hosts(shape)
            if hosts is None:
                if entry.reserved or entry.bypassed >= self.max_bypass:
                    entry.reserved = True
                    break  # nothing behind a reserved task may start
                if blocked is None:
                    blocked = entry
                continue  # the rest of this lane has the same shape: it cannot fit either
            del self._queued[entry.request.task_id]
            started.append(self._allocate(entry.request, hosts))
            if blocked is not None:
                blocked.bypassed += 1
                if blocked.bypassed >= self.max_bypass:
                    blocked.reserved = True
                    break
            nxt = self._lane_head(shape)
            if nxt is not None:
                heapq.heappush(heap, (nxt.key, nxt, shape))
        return started
