"""Unit tests for parsl_dragon.core.placement: events in (submit, release, ...), placements out."""
from __future__ import annotations

import heapq
import json
import math
import random
import time
from collections import Counter
from typing import Dict, Iterable, List, Optional, Tuple

import pytest

from parsl_dragon.core.placement import Cancellation, NodeSlots, Placement, Request, SlotTable


def _ids(placements: Iterable[Placement]) -> List[int]:
    return [p.task_id for p in placements]


def _nodes(n: int, cores: int = 8, gpus: int = 0, workers: int = 8, prefix: str = "n") -> List[NodeSlots]:
    return [NodeSlots(f"{prefix}{i}", cores, gpus, workers) for i in range(n)]


class Table(SlotTable):
    """A SlotTable that keeps a ledger of its own answers, so a test can ask what they imply
    (what runs where, what waits, what each node has left) without the table offering it."""

    def __init__(self, nodes: Iterable[NodeSlots] = (), **kwargs) -> None:
        nodes = list(nodes)
        super().__init__(nodes, **kwargs)
        self.slots = {n.hostname: n for n in nodes}
        self.started: Dict[int, Placement] = {}              # running, by task id
        self.waiting: Dict[int, Tuple[float, int]] = {}      # queued: (priority, arrival)
        self._arrivals = 0

    def _record(self, placements: List[Placement]) -> List[Placement]:
        for p in placements:
            del self.waiting[p.task_id]
            self.started[p.task_id] = p
        return placements

    def submit(self, request: Request) -> List[Placement]:
        started = super().submit(request)
        self._arrivals += 1
        self.waiting[request.task_id] = (request.priority, self._arrivals)
        return self._record(started)

    def release(self, task_id: int) -> List[Placement]:
        self.started.pop(task_id, None)
        return self._record(super().release(task_id))

    def cancel(self, task_ids: Iterable[int]) -> Cancellation:
        result = super().cancel(task_ids)
        for tid in result.dropped:
            del self.waiting[tid]
        self._record(result.started)
        return result

    def set_workers(self, hostname: str, workers: int) -> List[Placement]:
        started = super().set_workers(hostname, workers)
        self.slots[hostname] = NodeSlots(hostname, self.slots[hostname].cores, self.slots[hostname].gpus, workers)
        return self._record(started)

    # ---- what the answers imply
    @property
    def running(self) -> int:
        return len(self.started)

    def placement(self, task_id: int) -> Optional[Placement]:
        return self.started.get(task_id)

    def queued_ids(self) -> List[int]:
        return sorted(self.waiting, key=self.waiting.__getitem__)

    def used(self, hostname: str) -> Tuple[List[int], List[int], int]:
        """Core ids, GPU ids and workers the running tasks hold on a node."""
        cores: List[int] = []
        gpus: List[int] = []
        workers = 0
        for p in self.started.values():
            for i, (host, c, g) in enumerate(zip(p.hosts, p.cores, p.gpus)):
                if host == hostname:
                    cores += c
                    gpus += g
                    workers += i == 0
        return cores, gpus, workers

    def free_cores(self, hostname: str) -> int:
        return self.slots[hostname].cores - len(self.used(hostname)[0])

    def idle_workers(self, hostname: str) -> int:
        return max(0, self.slots[hostname].workers - self.used(hostname)[2])


def _never_fits(nodes: Iterable[NodeSlots], request: Request) -> bool:
    """What the table must refuse at submit: too few nodes that could hold it even empty."""
    n, cores, gpus = request.shape
    return sum(1 for s in nodes if s.cores >= cores and s.gpus >= gpus) < n


def _rank_slots(p: Placement, ranks_per_node: int) -> List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]:
    """``(host, core ids, gpu ids)`` per rank, block order, as the rank launch splits a placement."""
    slots = []
    for host, cores, gpus in zip(p.hosts, p.cores, p.gpus):
        c, g = len(cores) // ranks_per_node, len(gpus) // ranks_per_node
        for r in range(ranks_per_node):
            slots.append((host, cores[r * c:(r + 1) * c], gpus[r * g:(r + 1) * g]))
    return slots


def check_invariants(table: Table, requests: Dict[int, Request]) -> None:
    """No core/GPU id booked twice or out of range; worker limits; shapes as requested."""
    slots = {s.hostname: s for s in table.nodes}
    used_cores: Dict[str, List[int]] = {h: [] for h in slots}
    used_gpus: Dict[str, List[int]] = {h: [] for h in slots}
    firsts: Counter = Counter()
    for p in table.started.values():
        n, cores, gpus = requests[p.task_id].shape
        assert len(p.hosts) == n and len(set(p.hosts)) == n, p
        firsts[p.hosts[0]] += 1
        for host, c, g in zip(p.hosts, p.cores, p.gpus):
            assert len(c) == cores and len(g) == gpus, p
            assert all(0 <= i < slots[host].cores for i in c)
            assert all(0 <= i < slots[host].gpus for i in g)
            used_cores[host].extend(c)
            used_gpus[host].extend(g)
    for host, s in slots.items():
        assert len(set(used_cores[host])) == len(used_cores[host]), f"core double-booked on {host}"
        assert len(set(used_gpus[host])) == len(used_gpus[host]), f"gpu double-booked on {host}"
        assert firsts[host] <= s.workers


class Sim:
    """Drives a SlotTable like the server would: launch what it returns, release on finish."""

    def __init__(self, table: SlotTable, seed: int = 0) -> None:
        self.table = table
        self.rng = random.Random(seed)
        self.now = 0.0
        self.events = 0
        self.requests: Dict[int, Request] = {}
        self.durations: Dict[int, float] = {}
        self.started: Dict[int, int] = {}   # task -> event number at which it started
        self.finished: List[int] = []
        self._finishes: List = []

    def launch(self, placements: List[Placement]) -> None:
        for p in placements:
            assert p.task_id not in self.started, f"task {p.task_id} started twice"
            self.started[p.task_id] = self.events
            heapq.heappush(self._finishes, (self.now + self.durations[p.task_id], p.task_id))

    def submit(self, request: Request, duration: float = 1.0) -> None:
        self.events += 1
        self.requests[request.task_id] = request
        self.durations[request.task_id] = duration
        self.launch(self.table.submit(request))

    def finish_next(self) -> int:
        self.events += 1
        self.now, tid = heapq.heappop(self._finishes)
        self.finished.append(tid)
        self.launch(self.table.release(tid))
        return tid

    @property
    def busy(self) -> bool:
        return bool(self._finishes)


# ---------------------------------------------------------------- value types

def test_request_defaults_describe_a_serial_task():
    r = Request(1)
    assert (r.num_nodes, r.ranks_per_node, r.cpus_per_rank, r.gpus_per_rank) == (1, 1, 1, 0)
    assert r.priority == math.inf, "unset priority queues after every set one (HTEX)"
    assert r.shape == (1, 1, 0)
    assert Request(2, num_nodes=3, ranks_per_node=4, cpus_per_rank=2, gpus_per_rank=1).shape == (3, 8, 4)


@pytest.mark.parametrize("kwargs", [
    {"num_nodes": 0}, {"ranks_per_node": 0}, {"cpus_per_rank": 0}, {"gpus_per_rank": -1},
    {"num_nodes": True}, {"priority": "high"}, {"priority": math.nan}, {"ranks_per_node": "2"},
])
def test_request_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        Request(1, **kwargs)


@pytest.mark.parametrize("args", [("", 8), ("a", 0), ("a", 8, -1), ("a", 8, 0, -1), ("a", 8.0)])
def test_node_slots_rejects_bad_values(args):
    with pytest.raises(ValueError):
        NodeSlots(*args)


def test_rank_slots_split_cores_and_gpus_per_rank():
    t = SlotTable([NodeSlots("a", 8, gpus=4), NodeSlots("b", 8, gpus=4)])
    [p] = t.submit(Request(1, num_nodes=2, ranks_per_node=2, cpus_per_rank=3, gpus_per_rank=2))
    slots = _rank_slots(p, ranks_per_node=2)
    assert len(slots) == 4
    assert [s[0] for s in slots] == [p.hosts[0], p.hosts[0], p.hosts[1], p.hosts[1]]
    assert [len(s[1]) for s in slots] == [3, 3, 3, 3]
    assert [len(s[2]) for s in slots] == [2, 2, 2, 2]
    assert slots[0][1] + slots[1][1] == p.cores[0]
    assert slots[0][2] + slots[1][2] == p.gpus[0]


def test_to_wire_is_the_json_wire_form_and_from_wire_rebuilds_it():
    t = SlotTable([NodeSlots("a", 4, gpus=2), NodeSlots("b", 4, gpus=2)])
    [p] = t.submit(Request(1, num_nodes=2, ranks_per_node=2, gpus_per_rank=1))
    d = p.to_wire()
    assert json.loads(json.dumps(d)) == d
    assert d == {"hosts": list(p.hosts), "cores": [[0, 1], [0, 1]], "gpus": [[0, 1], [0, 1]]}
    assert Placement.from_wire(1, json.loads(json.dumps(d))) == p
    serial = Placement(7, ("a",), ((3,),), ((),))
    assert Placement.from_wire(7, serial.to_wire()) == serial


@pytest.mark.parametrize("data, field", [
    ([], "hosts, cores and gpus"),
    ({"hosts": ["a"], "cores": [[0]]}, "hosts, cores and gpus"),
    ({"hosts": ["a"], "cores": [[0]], "gpus": [[]], "ranks": 1}, "hosts, cores and gpus"),
    ({"hosts": [], "cores": [], "gpus": []}, "'hosts'"),
    ({"hosts": "a", "cores": [[0]], "gpus": [[]]}, "'hosts'"),
    ({"hosts": ["a", "a"], "cores": [[0], [0]], "gpus": [[], []]}, "'hosts'"),
    ({"hosts": ["a", ""], "cores": [[0], [0]], "gpus": [[], []]}, "'hosts'"),
    ({"hosts": [["a"]], "cores": [[0]], "gpus": [[]]}, "'hosts'"),
    ({"hosts": ["a"], "cores": [[0], [1]], "gpus": [[]]}, "'cores'"),
    ({"hosts": ["a"], "cores": [0], "gpus": [[]]}, "'cores'"),
    ({"hosts": ["a"], "cores": [[]], "gpus": [[]]}, "'cores'"),              # at least one core
    ({"hosts": ["a"], "cores": [[-1]], "gpus": [[]]}, "'cores'"),
    ({"hosts": ["a"], "cores": [[0, 0]], "gpus": [[]]}, "'cores'"),
    ({"hosts": ["a"], "cores": [[True]], "gpus": [[]]}, "'cores'"),
    ({"hosts": ["a"], "cores": [[[0]]], "gpus": [[]]}, "'cores'"),
    ({"hosts": ["a", "b"], "cores": [[0, 1], [0]], "gpus": [[], []]}, "'cores'"),  # same shape on every host
    ({"hosts": ["a"], "cores": [[0]], "gpus": [[1.0]]}, "'gpus'"),
    ({"hosts": ["a"], "cores": [[0]], "gpus": {}}, "'gpus'"),
])
def test_from_wire_refuses_a_malformed_placement_naming_the_field(data, field):
    with pytest.raises(ValueError, match=field):
        Placement.from_wire(1, data)


def test_from_wire_errors_stay_short():
    with pytest.raises(ValueError) as info:
        Placement.from_wire(1, {"hosts": ["a"], "cores": [list(range(100_000)) + [-1]], "gpus": [[]]})
    assert len(str(info.value)) < 300


# ---------------------------------------------------------------- packing

def test_docstring_example():
    t = SlotTable([NodeSlots("n1", 8, workers=3), NodeSlots("n2", 8, workers=3)], max_bypass=1)
    assert [p.hosts for p in t.submit(Request(1, ranks_per_node=6))] == [("n1",)]
    assert [p.hosts for p in t.submit(Request(2, ranks_per_node=8))] == [("n2",)]
    assert t.submit(Request(3, ranks_per_node=8)) == []
    assert [p.hosts for p in t.submit(Request(4))] == [("n1",)]       # backfill past 3
    assert t.submit(Request(5)) == []                                  # 3 is reserved now
    assert [(p.task_id, p.hosts) for p in t.release(2)] == [(3, ("n2",)), (5, ("n1",))]


def test_small_mpi_tasks_share_a_node():
    t = Table([NodeSlots("a", 64, workers=8), NodeSlots("b", 64, workers=8)])
    placed = [p for i in range(4) for p in t.submit(Request(i, ranks_per_node=16))]
    assert {p.hosts for p in placed} == {("a",)} or {p.hosts for p in placed} == {("b",)}
    all_cores = [c for p in placed for c in p.cores[0]]
    assert sorted(all_cores) == list(range(64))
    assert t.free_cores(placed[0].hosts[0]) == 0


def test_best_fit_keeps_whole_nodes_for_big_jobs():
    t = Table(_nodes(2, cores=64))
    [a] = t.submit(Request(1, ranks_per_node=40))
    [b] = t.submit(Request(2, ranks_per_node=20))     # fits next to 1: must not open the empty node
    assert b.hosts == a.hosts
    [big] = t.submit(Request(3, ranks_per_node=64))   # the whole other node is still free
    assert big.hosts != a.hosts
    assert t.queued == 0 and t.running == 3


def test_multi_node_tasks_get_distinct_nodes():
    t = SlotTable(_nodes(4, cores=8))
    [p] = t.submit(Request(1, num_nodes=4, ranks_per_node=2))
    assert sorted(p.hosts) == ["n0", "n1", "n2", "n3"]
    assert all(len(c) == 2 for c in p.cores)
    # 3 more nodes with 7 cores each are not on offer: only 4 nodes exist, each with 6 free
    assert t.submit(Request(2, num_nodes=3, ranks_per_node=7)) == []
    [q] = t.submit(Request(3, num_nodes=3, ranks_per_node=6))
    assert len(set(q.hosts)) == 3


def test_serial_and_mpi_tasks_share_the_allocation():
    t = Table(_nodes(2, cores=8, workers=8))
    serial = [p for i in range(6) for p in t.submit(Request(i))]
    assert len(serial) == 6
    mpi = t.submit(Request(100, num_nodes=2, ranks_per_node=5))
    assert mpi == []                                   # 6 cores taken on one node at least
    [p] = t.submit(Request(101, num_nodes=1, ranks_per_node=8))
    assert t.free_cores(p.hosts[0]) == 0
    check_invariants(t, {**{i: Request(i) for i in range(6)}, 101: Request(101, ranks_per_node=8)})


# ---------------------------------------------------------------- queueing and priority

def test_tasks_wait_when_full_and_start_on_release():
    t = Table(_nodes(1, cores=2, workers=2))
    assert _ids(t.submit(Request(1))) == [1]
    assert _ids(t.submit(Request(2))) == [2]
    assert t.submit(Request(3)) == [] and t.submit(Request(4)) == []
    assert (t.running, t.queued) == (2, 2)
    assert t.queued_ids() == [3, 4]
    assert _ids(t.release(2)) == [3]
    assert _ids(t.release(1)) == [4]
    assert t.release(3) == [] and t.release(4) == []
    assert (t.running, t.queued, t.free_cores("n0")) == (0, 0, 2)


def test_release_of_an_unknown_task_changes_nothing():
    t = Table(_nodes(1))
    t.submit(Request(1))
    assert t.release(99) == []
    assert t.running == 1


def test_priority_then_arrival_order():
    t = Table(_nodes(1, cores=1, workers=1))
    t.submit(Request(0))                                   # occupies the only core
    for tid, prio in [(1, 0), (2, 5), (3, 1), (4, 5), (5, -2), (6, math.inf), (7, 0.5)]:
        assert t.submit(Request(tid, priority=prio)) == []
    # HTEX's meaning: lower value first; unset (inf) last; ties by arrival
    assert t.queued_ids() == [5, 1, 7, 3, 2, 4, 6]
    order = []
    running = 0
    while True:
        started = t.release(running)
        if not started:
            break
        [p] = started
        order.append(p.task_id)
        running = p.task_id
    assert order == [5, 1, 7, 3, 2, 4, 6]


def test_duplicate_task_ids_are_rejected():
    t = SlotTable(_nodes(1, cores=1, workers=1))
    t.submit(Request(1))
    t.submit(Request(2))
    for tid in (1, 2):
        with pytest.raises(ValueError, match="already"):
            t.submit(Request(tid))


@pytest.mark.parametrize("request_, fits", [
    (Request(1, ranks_per_node=16), True),
    (Request(1, num_nodes=2, ranks_per_node=8), True),
    (Request(1, gpus_per_rank=2), True),
    (Request(1, num_nodes=3), False),
    (Request(1, ranks_per_node=17), False),
    (Request(1, num_nodes=2, gpus_per_rank=1), False),
    (Request(1, cpus_per_rank=9, gpus_per_rank=1), False),
])
def test_requests_that_never_fit_are_rejected_at_submit(request_, fits):
    nodes = [NodeSlots("a", 8, gpus=2, workers=0), NodeSlots("b", 16, workers=0)]  # nothing starts: only the check
    assert _never_fits(nodes, request_) is not fits
    t = SlotTable(nodes)
    if fits:
        assert t.submit(request_) == [] and t.queued == 1
    else:
        with pytest.raises(ValueError, match="never fits"):
            t.submit(request_)
        assert t.queued == 0


# ---------------------------------------------------------------- backfill and starvation

def _full_node_with_big_job_waiting(max_bypass: int):
    """1 node x 8 cores full of serial tasks 0..7; task 100 wants the whole node."""
    t = Table(_nodes(1, cores=8, workers=8), max_bypass=max_bypass)
    for i in range(8):
        t.submit(Request(i))
    assert t.submit(Request(100, ranks_per_node=8)) == []
    return t


def test_small_tasks_backfill_past_a_blocked_big_one():
    t = Table(_nodes(2, cores=8, workers=8))
    t.submit(Request(1, ranks_per_node=4))
    t.submit(Request(2, ranks_per_node=4))            # best fit: same node as 1 -> node full
    t.submit(Request(3, ranks_per_node=6))            # other node: 2 cores left
    assert t.submit(Request(10, ranks_per_node=8)) == []
    backfilled = _ids(t.submit(Request(11))) + _ids(t.submit(Request(12)))
    assert backfilled == [11, 12]                      # the big job does not block them
    assert t.queued_ids() == [10]
    t.release(11)
    t.release(12)
    assert _ids(t.release(3)) == [10]


def test_max_bypass_zero_means_no_backfill():
    t = _full_node_with_big_job_waiting(max_bypass=0)
    assert t.submit(Request(8)) == []
    assert _ids(t.release(0)) == []                    # a core is free but 8 waits behind 100
    assert t.queued_ids() == [100, 8]


def _stream(t: SlotTable, events: int) -> int:
    """Release the oldest small task and submit a new one, ``events`` times.

    Returns the number of events until task 100 started, or -1 if it never did."""
    running = list(range(8))
    next_id = 200
    for event in range(1, events + 1):
        t.submit(Request(next_id))
        next_id += 1
        started = t.release(running.pop(0))
        if 100 in _ids(started):
            return event
        running.extend(_ids(started))
    return -1


def test_big_job_is_not_starved_by_a_stream_of_small_ones():
    max_bypass = 4
    t = _full_node_with_big_job_waiting(max_bypass)
    started_after = _stream(t, 1000)
    # max_bypass small tasks pass it, then the 8 running tasks drain
    assert 0 < started_after <= max_bypass + 8
    assert t.placement(100).cores == (tuple(range(8)),)


def test_without_reservation_the_same_stream_would_starve_it():
    t = _full_node_with_big_job_waiting(max_bypass=10 ** 9)
    assert _stream(t, 1000) == -1


def test_reserved_task_still_yields_to_higher_priority():
    t = _full_node_with_big_job_waiting(max_bypass=0)
    assert t.submit(Request(50, priority=1)) == []
    assert _ids(t.release(0)) == [50]                  # ahead of 100 in the queue


def test_cancelling_a_reserved_task_unblocks_the_queue():
    t = _full_node_with_big_job_waiting(max_bypass=0)
    t.submit(Request(8))
    t.release(0)
    result = t.cancel([100, 5, 12345])
    assert isinstance(result, Cancellation)
    assert result.dropped == [100]                     # 5 is running: not the table's to drop
    assert _ids(result.started) == [8]
    assert t.placement(5) is not None and t.queued == 0


def test_cancel_of_nothing_queued_starts_nothing():
    t = SlotTable(_nodes(1, cores=1, workers=1))
    t.submit(Request(1))
    t.submit(Request(2))
    assert t.cancel([1]) == Cancellation([], [])
    assert t.cancel([2]) == Cancellation([2], [])
    assert t.release(1) == []


def test_cancelled_id_may_be_submitted_again():
    t = Table(_nodes(1, cores=1, workers=1))
    t.submit(Request(1))
    t.submit(Request(2, ranks_per_node=1))
    t.cancel([2])
    t.submit(Request(2, priority=3))
    assert t.queued_ids() == [2]
    assert _ids(t.release(1)) == [2]


# ---------------------------------------------------------------- workers and GPUs

def test_workers_limit_tasks_per_first_node():
    t = SlotTable([NodeSlots("a", 64, workers=2)])
    assert _ids(t.submit(Request(1))) + _ids(t.submit(Request(2))) == [1, 2]
    assert t.submit(Request(3)) == []                  # 62 cores free, but no idle worker
    assert t.submit(Request(4, ranks_per_node=8)) == []
    assert _ids(t.release(1)) == [3]


def test_first_node_is_one_with_an_idle_worker():
    t = Table([NodeSlots("a", 8, workers=0), NodeSlots("b", 8, workers=1)])
    [p] = t.submit(Request(1, num_nodes=2, ranks_per_node=4))
    assert p.hosts == ("b", "a")
    assert t.submit(Request(2, num_nodes=2, ranks_per_node=4)) == []  # b's worker is busy
    assert t.idle_workers("b") == 0


def test_set_workers_starts_waiting_tasks():
    t = Table([NodeSlots("a", 8, workers=0)])
    assert t.submit(Request(1)) == [] and t.submit(Request(2)) == []
    assert _ids(t.set_workers("a", 1)) == [1]
    assert _ids(t.set_workers("a", 3)) == [2]
    assert t.set_workers("a", 0) == []                 # running tasks keep their workers
    assert t.running == 2
    assert t.set_workers("a", 3) == []                 # 2 of 3 busy
    with pytest.raises(ValueError):
        t.set_workers("a", -1)
    assert _ids(t.submit(Request(3))) == [3], "a refused worker count leaves the node as it was"


def test_gpus_are_reserved_and_never_shared():
    t = SlotTable([NodeSlots("cpu", 64, workers=8), NodeSlots("gpu", 16, gpus=4, workers=8)])
    [a] = t.submit(Request(1, gpus_per_rank=2))
    [b] = t.submit(Request(2, ranks_per_node=2, gpus_per_rank=1))
    assert a.hosts == b.hosts == ("gpu",)
    assert set(a.gpus[0]) | set(b.gpus[0]) == {0, 1, 2, 3}
    assert not set(a.gpus[0]) & set(b.gpus[0])
    assert t.submit(Request(3, gpus_per_rank=1)) == []  # GPUs gone, cores left on both nodes
    [c] = t.submit(Request(4))
    assert c.gpus == ((),)
    assert _ids(t.release(1)) == [3]


def test_empty_table():
    t = SlotTable()
    assert (t.queued, t.nodes) == (0, ())
    with pytest.raises(ValueError, match="never fits"):
        t.submit(Request(1))
    with pytest.raises(ValueError):
        SlotTable(max_bypass=-1)
    with pytest.raises(ValueError, match="already"):
        SlotTable([NodeSlots("a", 1), NodeSlots("a", 2)])


# ---------------------------------------------------------------- simulations

def _random_request(rng: random.Random, tid: int, big_nodes: int, gpus: bool) -> Request:
    kind = rng.random()
    prio = rng.choice([0, 0, 0, 1, 2])
    if kind < 0.55:
        return Request(tid, cpus_per_rank=rng.choice([1, 1, 2]), priority=prio)
    if kind < 0.85:
        return Request(tid, ranks_per_node=rng.randint(2, 32), priority=prio)
    if kind < 0.94:
        return Request(tid, num_nodes=rng.randint(2, 16), ranks_per_node=rng.choice([4, 16, 64]), priority=prio)
    if kind < 0.99 and gpus:
        return Request(tid, num_nodes=rng.randint(1, 8), ranks_per_node=4, cpus_per_rank=4, gpus_per_rank=1,
                       priority=prio)
    return Request(tid, num_nodes=big_nodes, ranks_per_node=64, priority=prio)


def test_random_events_never_double_book():
    rng = random.Random(20261124)
    nodes = [NodeSlots(f"n{i}", rng.choice([8, 16]), gpus=rng.choice([0, 2]), workers=rng.randint(1, 4))
             for i in range(6)]
    t = Table(nodes, max_bypass=3)
    requests: Dict[int, Request] = {}
    running: List[int] = []
    seen: Counter = Counter()
    for tid in range(5000):
        action = rng.random()
        if action < 0.5:
            req = Request(tid, num_nodes=rng.randint(1, 3), ranks_per_node=rng.randint(1, 4),
                          cpus_per_rank=rng.randint(1, 2), gpus_per_rank=rng.choice([0, 0, 1]),
                          priority=rng.randint(0, 2))
            if _never_fits(nodes, req):
                with pytest.raises(ValueError, match="never fits"):
                    t.submit(req)
                seen["refused"] += 1
            else:
                requests[tid] = req
                running += _ids(t.submit(req))
                seen["submitted"] += 1
        elif action < 0.9 and running:
            running += _ids(t.release(running.pop(rng.randrange(len(running)))))
        elif action < 0.93:
            queued = t.queued_ids()
            dropped, started = t.cancel(rng.sample(queued, min(2, len(queued))) + running[:1])
            assert not set(dropped) & set(running)
            seen["dropped"] += len(dropped)
            running += _ids(started)
        else:
            host = rng.choice([s.hostname for s in t.nodes])
            running += _ids(t.set_workers(host, rng.randint(0, 4)))
        seen["max_running"] = max(seen["max_running"], len(running))
        assert sorted(running) == sorted(t.started)
        _check_no_double_booking(t, requests)
    # the run exercised every path, not just an idle table
    assert seen["submitted"] > 1500 and seen["dropped"] > 0 and seen["refused"] > 0
    assert seen["max_running"] >= 5


def _check_no_double_booking(t: Table, requests: Dict[int, Request]) -> None:
    by_host: Dict[str, List[int]] = {}
    for p in t.started.values():
        assert len(p.hosts) == requests[p.task_id].num_nodes == len(set(p.hosts))
        for host, cores in zip(p.hosts, p.cores):
            by_host.setdefault(host, []).extend(cores)
    for s in t.nodes:
        used = by_host.get(s.hostname, [])
        assert len(used) == len(set(used)) and all(0 <= i < s.cores for i in used)


def test_thousand_node_allocation_runs_mixed_work_to_completion():
    nodes = [NodeSlots(f"nid{i:05d}", 64, gpus=4 if i % 4 == 0 else 0, workers=16) for i in range(1000)]
    sim = Sim(Table(nodes), seed=7)
    total, first_wave = 6000, 3000
    begin = time.perf_counter()
    for tid in range(first_wave):
        sim.submit(_random_request(sim.rng, tid, 300, gpus=True), duration=sim.rng.uniform(1, 20))
    assert sim.table.running > 0 and sim.table.queued > 0   # the allocation is oversubscribed
    check_invariants(sim.table, sim.requests)
    next_id = first_wave
    while sim.busy:
        sim.finish_next()
        if next_id < total:
            sim.submit(_random_request(sim.rng, next_id, 300, gpus=True), duration=sim.rng.uniform(1, 20))
            next_id += 1
        if sim.events % 1000 == 0:
            check_invariants(sim.table, sim.requests)
    elapsed = time.perf_counter() - begin
    assert sorted(sim.finished) == list(range(total))
    assert (sim.table.running, sim.table.queued) == (0, 0)
    assert elapsed < 30, f"{total} tasks on 1000 nodes took {elapsed:.1f}s"
    # nothing leaked: every GPU, core and worker can be taken again at once
    gpu_nodes = [Request(10**6 + i, ranks_per_node=4, cpus_per_rank=16, gpus_per_rank=1) for i in range(250)]
    assert [len(sim.table.submit(r)) for r in gpu_nodes] == [1] * 250
    for r in gpu_nodes:
        assert sim.table.release(r.task_id) == []
    refill = [Request(2 * 10**6 + i, ranks_per_node=4) for i in range(16 * len(nodes))]  # 16 x 4 cores per node
    assert sum(len(sim.table.submit(r)) for r in refill) == len(refill) and sim.table.queued == 0
