"""Unit tests for parsl_dragon.scheduler: events in, Dispatch actions out."""
from __future__ import annotations

import random
from collections import Counter
from typing import Dict, List

import pytest

from parsl_dragon.scheduler import Dispatch, TaskScheduler


def _as_dict(dispatches: List[Dispatch]) -> Dict[str, List[int]]:
    result: Dict[str, List[int]] = {}
    for d in dispatches:
        assert d.task_ids, "a Dispatch must carry at least one task"
        assert d.worker_id not in result, "one Dispatch per worker per event"
        result[d.worker_id] = list(d.task_ids)
    return result


def _counts(s: TaskScheduler):
    return s.workers, s.running, s.queued


def _scheduler(workers=("A", "B", "C"), prefetch=0) -> TaskScheduler:
    s = TaskScheduler(prefetch=prefetch)
    for w in workers:
        lost, dispatches = s.add_worker(w, f"host-{w}")
        assert lost == [] and dispatches == []
    return s


# ---------------------------------------------------------------- construction

def test_capacity_is_one_plus_prefetch():
    assert TaskScheduler().capacity_per_worker == 1
    assert TaskScheduler(prefetch=0).capacity_per_worker == 1
    assert TaskScheduler(prefetch=3).capacity_per_worker == 4


def test_negative_prefetch_is_rejected():
    with pytest.raises(ValueError, match="prefetch"):
        TaskScheduler(prefetch=-1)


def test_empty_scheduler_counters():
    s = TaskScheduler()
    assert _counts(s) == (0, 0, 0)
    assert s.worker_hosts() == {}
    assert s.host_of(1) == ""


# ---------------------------------------------------------------- FIFO and spreading

def test_tasks_queue_until_a_worker_appears():
    s = TaskScheduler()
    assert s.submit([1, 2, 3]) == []
    assert _counts(s) == (0, 0, 3)
    lost, dispatches = s.add_worker("A", "h")
    assert lost == []
    assert dispatches == [Dispatch("A", [1])]
    assert _counts(s) == (1, 1, 2)


def test_fifo_order_on_a_single_worker():
    s = _scheduler(["A"])
    assert s.submit([10, 11, 12, 13]) == [Dispatch("A", [10])]
    order = [10]
    for _ in range(3):
        (d,) = s.complete([order[-1]])
        assert d.worker_id == "A"
        order.extend(d.task_ids)
    assert order == [10, 11, 12, 13]
    assert s.complete([13]) == []
    assert _counts(s) == (1, 0, 0)


def test_fifo_across_submissions():
    s = _scheduler(["A"])
    s.submit([1])
    s.submit([5, 3])
    s.submit([4])
    got = []
    running = 1
    while True:
        ds = s.complete([running])
        if not ds:
            break
        running = ds[0].task_ids[0]
        got.append(running)
    assert got == [5, 3, 4]


def test_fifo_order_within_a_batch_with_prefetch():
    s = _scheduler(["A"], prefetch=3)
    assert s.submit(list(range(10))) == [Dispatch("A", [0, 1, 2, 3])]
    assert s.complete([0, 1]) == [Dispatch("A", [4, 5])]


def test_spread_round_robin_over_workers():
    s = _scheduler(["A", "B", "C"], prefetch=1)
    dispatches = _as_dict(s.submit([1, 2, 3, 4, 5, 6]))
    assert dispatches == {"A": [1, 4], "B": [2, 5], "C": [3, 6]}
    assert _counts(s) == (3, 6, 0)


def test_spread_when_fewer_tasks_than_workers():
    s = _scheduler(["A", "B", "C", "D"], prefetch=5)
    dispatches = _as_dict(s.submit([1, 2, 3]))
    assert dispatches == {"A": [1], "B": [2], "C": [3]}  # one each, not all on A


def test_round_robin_continues_across_submissions():
    s = _scheduler(["A", "B", "C"], prefetch=2)
    assert s.submit([1]) == [Dispatch("A", [1])]
    assert s.submit([2]) == [Dispatch("B", [2])]
    assert s.submit([3]) == [Dispatch("C", [3])]
    assert s.submit([4]) == [Dispatch("A", [4])]


def test_next_task_goes_to_least_loaded_worker():
    s = _scheduler(["A", "B"], prefetch=2)
    assert _as_dict(s.submit([1, 2])) == {"A": [1], "B": [2]}
    assert s.complete([2]) == []  # B is idle now, A still runs 1
    assert s.submit([3]) == [Dispatch("B", [3])]  # not queued behind task 1 on A


def test_idle_worker_preferred_over_busy_one_after_completions():
    s = _scheduler(["A", "B", "C"], prefetch=1)
    s.submit([1, 2, 3, 4, 5, 6])  # A:[1,4] B:[2,5] C:[3,6]
    s.complete([3, 6])  # C empty, A and B full
    s.complete([1])  # A has one left
    # C (load 0) first, then A and C have load 1: round robin between them
    assert _as_dict(s.submit([7, 8, 9])) == {"C": [7, 9], "A": [8]}
    assert _counts(s) == (3, 6, 0)


def test_new_worker_receives_queued_tasks():
    s = _scheduler(["A"], prefetch=1)
    s.submit([1, 2, 3, 4, 5])
    lost, dispatches = s.add_worker("B", "hb")
    assert lost == []
    assert dispatches == [Dispatch("B", [3, 4])]
    assert _counts(s) == (2, 4, 1)


# ---------------------------------------------------------------- capacity

@pytest.mark.parametrize("prefetch", [0, 1, 4])
def test_capacity_respected(prefetch):
    s = _scheduler(["A", "B"], prefetch=prefetch)
    dispatches = _as_dict(s.submit(list(range(100))))
    assert {w: len(ids) for w, ids in dispatches.items()} == {"A": 1 + prefetch, "B": 1 + prefetch}
    assert s.running == 2 * (1 + prefetch)
    assert s.queued == 100 - 2 * (1 + prefetch)
    assert s.submit([1000]) == []  # still full


def test_complete_frees_exactly_the_completed_slots():
    s = _scheduler(["A", "B"], prefetch=1)
    s.submit(list(range(10)))  # A:[0,2] B:[1,3], 4..9 queued
    assert s.complete([0, 2]) == [Dispatch("A", [4, 5])]
    assert s.complete([1]) == [Dispatch("B", [6])]
    assert _counts(s) == (2, 4, 3)


def test_complete_unknown_or_repeated_task_is_harmless():
    s = _scheduler(["A"], prefetch=0)
    s.submit([1, 2])
    assert s.complete([99]) == []
    assert _counts(s) == (1, 1, 1)
    assert s.complete([1]) == [Dispatch("A", [2])]
    assert s.complete([1]) == []  # duplicate result for 1
    assert _counts(s) == (1, 1, 0)
    assert s.host_of(2) == "host-A"


def test_complete_of_a_queued_task_does_not_free_slots():
    s = _scheduler(["A"], prefetch=0)
    s.submit([1, 2, 3])
    assert s.complete([3]) == []  # 3 never ran; the worker is still busy with 1
    assert _counts(s) == (1, 1, 2)


# ---------------------------------------------------------------- lost workers

def test_remove_worker_returns_its_tasks_as_lost():
    s = _scheduler(["A", "B"], prefetch=2)
    s.submit(list(range(1, 7)))  # A:[1,3,5] B:[2,4,6]
    lost, dispatches = s.remove_worker("B")
    assert lost == [2, 4, 6]
    assert dispatches == []
    assert _counts(s) == (1, 3, 0)
    assert s.worker_hosts() == {"A": "host-A"}
    assert s.host_of(2) == ""
    assert s.host_of(1) == "host-A"


def test_lost_tasks_can_be_redispatched_to_survivors():
    s = _scheduler(["A", "B"], prefetch=0)
    s.submit([1, 2, 3])
    lost, _ = s.remove_worker("A")
    assert lost == [1]
    assert s.submit(lost) == []  # B is busy: 1 queues behind 3
    assert s.complete([2]) == [Dispatch("B", [3])]
    assert s.complete([3]) == [Dispatch("B", [1])]


def test_lost_tasks_redispatched_immediately_when_capacity_exists():
    s = _scheduler(["A", "B"], prefetch=1)
    s.submit([1])
    lost, _ = s.remove_worker("A")
    assert lost == [1]
    assert s.submit(lost) == [Dispatch("B", [1])]


def test_late_result_from_removed_worker_does_not_free_slots():
    s = _scheduler(["A", "B"], prefetch=0)
    s.submit([1, 2, 3])
    s.remove_worker("A")
    assert s.complete([1]) == []  # stale result of a lost task
    assert _counts(s) == (1, 1, 1)


def test_remove_unknown_worker():
    s = _scheduler(["A"])
    s.submit([1])
    assert s.remove_worker("Z") == ([], [])
    assert _counts(s) == (1, 1, 0)


def test_remove_last_worker_keeps_queue_for_the_next():
    s = _scheduler(["A"])
    s.submit([1, 2, 3])
    lost, dispatches = s.remove_worker("A")
    assert (lost, dispatches) == ([1], [])
    assert _counts(s) == (0, 0, 2)
    assert s.submit([4]) == []
    assert s.add_worker("B", "hb") == ([], [Dispatch("B", [2])])


def test_removed_worker_gets_no_more_tasks():
    s = _scheduler(["A", "B", "C"], prefetch=1)
    s.remove_worker("B")
    dispatches = _as_dict(s.submit(list(range(10))))
    assert set(dispatches) == {"A", "C"}


def test_add_known_worker_returns_old_tasks_as_lost():
    s = _scheduler(["A", "B"], prefetch=1)
    s.submit([1, 2, 3, 4, 5, 6])  # A:[1,3] B:[2,4] queue 5,6
    lost, dispatches = s.add_worker("A", "new-host")
    assert lost == [1, 3]
    assert dispatches == [Dispatch("A", [5, 6])]
    assert s.worker_hosts() == {"A": "new-host", "B": "host-B"}
    assert s.host_of(5) == "new-host"
    assert s.host_of(1) == ""
    assert _counts(s) == (2, 4, 0)
    assert s.complete([1]) == []  # a stale result for a lost task changes nothing
    assert _counts(s) == (2, 4, 0)


def test_add_known_idle_worker_loses_nothing():
    s = _scheduler(["A"])
    assert s.add_worker("A", "host-A") == ([], [])
    assert s.workers == 1


# ---------------------------------------------------------------- cancel

def test_cancel_drops_only_pending_tasks():
    s = _scheduler(["A"], prefetch=1)
    s.submit([1, 2, 3, 4, 5])  # A:[1,2], queue 3,4,5
    dropped = s.cancel({2, 4, 5, 99})
    assert dropped == [4, 5]
    assert _counts(s) == (1, 2, 1)
    assert s.host_of(2) == "host-A"  # running/prefetched tasks are not cancelled
    assert s.complete([1, 2]) == [Dispatch("A", [3])]
    assert s.complete([3]) == []


def test_cancel_returns_pending_in_fifo_order_and_keeps_rest_in_order():
    s = TaskScheduler()
    s.submit([9, 3, 7, 1, 5])
    assert s.cancel({1, 9, 5}) == [9, 1, 5]
    assert s.queued == 2
    _, dispatches = s.add_worker("A", "h")
    assert dispatches == [Dispatch("A", [3])]
    assert s.complete([3]) == [Dispatch("A", [7])]


def test_cancel_nothing():
    s = TaskScheduler()
    s.submit([1, 2])
    assert s.cancel(set()) == []
    assert s.cancel({3}) == []
    assert s.queued == 2


# ---------------------------------------------------------------- queries

def test_counters_follow_events():
    s = TaskScheduler(prefetch=1)
    assert _counts(s) == (0, 0, 0)
    s.submit([1, 2, 3, 4, 5])
    assert _counts(s) == (0, 0, 5)
    s.add_worker("A", "h")
    assert _counts(s) == (1, 2, 3)
    s.add_worker("B", "h")
    assert _counts(s) == (2, 4, 1)
    s.complete([1])
    assert _counts(s) == (2, 4, 0)
    s.remove_worker("A")
    assert _counts(s) == (1, 2, 0)
    s.cancel({5})
    assert _counts(s) == (1, 2, 0)


def test_host_of_and_worker_hosts():
    s = _scheduler(["A", "B"])
    s.submit([1, 2, 3])
    assert s.host_of(1) == "host-A"
    assert s.host_of(2) == "host-B"
    assert s.host_of(3) == ""  # queued
    assert s.worker_hosts() == {"A": "host-A", "B": "host-B"}


# ---------------------------------------------------------------- randomized simulation

class _Sim:
    """Drives a scheduler like the server does, checking invariants after every event."""

    def __init__(self, seed: int, prefetch: int) -> None:
        self.rng = random.Random(seed)
        self.s = TaskScheduler(prefetch=prefetch)
        self.cap = 1 + prefetch
        self.held: Dict[str, List[int]] = {}  # worker -> tasks sent to it, in order
        self.dispatch_count: Counter = Counter()
        self.completed: set = set()
        self.lost: set = set()
        self.submitted: List[int] = []
        self.next_task = 0
        self.next_worker = 0
        self.single_dispatches = 0

    def apply(self, dispatches: List[Dispatch]) -> None:
        for d in dispatches:
            assert d.worker_id in self.held, "dispatch to an unknown worker"
            for t in d.task_ids:
                self.dispatch_count[t] += 1
                assert t not in self.completed, f"completed task {t} dispatched again"
                self.held[d.worker_id].append(t)

    def check(self) -> None:
        s = self.s
        for w, tasks in self.held.items():
            assert len(tasks) <= self.cap, f"worker {w} holds {len(tasks)} > {self.cap}"
        placed = [t for tasks in self.held.values() for t in tasks]
        assert len(placed) == len(set(placed)), "a task is on two workers"
        assert s.running == len(placed)
        assert s.workers == len(self.held)
        outstanding = set(self.submitted) - self.completed - self.lost
        assert s.queued == len(outstanding) - len(placed)
        # the scheduler never leaves capacity idle while tasks wait
        if s.queued:
            assert all(len(t) == self.cap for t in self.held.values())
        for w, tasks in self.held.items():
            for t in tasks:
                assert s.host_of(t) == "h" + w

    def add_worker(self) -> None:
        w = f"w{self.next_worker}"
        self.next_worker += 1
        self.held[w] = []
        lost, dispatches = self.s.add_worker(w, "h" + w)
        assert lost == []
        self.apply(dispatches)

    def restart_worker(self) -> None:
        w = self.rng.choice(sorted(self.held))
        old = self.held[w]
        self.held[w] = []
        lost, dispatches = self.s.add_worker(w, "h" + w)
        assert lost == sorted(old)
        self.resubmit(lost)
        self.apply(dispatches)

    def remove_worker(self) -> None:
        w = self.rng.choice(sorted(self.held))
        old = self.held.pop(w)
        lost, dispatches = self.s.remove_worker(w)
        assert lost == sorted(old)
        self.apply(dispatches)
        self.resubmit(lost)

    def resubmit(self, lost: List[int]) -> None:
        # the server fails lost tasks; Parsl retries them as new tasks
        self.lost.update(lost)
        if lost:
            self.submit(len(lost))

    def submit(self, n: int) -> None:
        ids = list(range(self.next_task, self.next_task + n))
        self.next_task += n
        self.submitted.extend(ids)
        loads = {w: len(tasks) for w, tasks in self.held.items()}
        dispatches = self.s.submit(ids)
        if n == 1 and dispatches:
            # a single new task always goes to a least-loaded worker
            (d,) = dispatches
            self.single_dispatches += 1
            assert loads[d.worker_id] == min(loads.values())
        self.apply(dispatches)

    def complete_some(self) -> None:
        running = [(w, t) for w, tasks in self.held.items() for t in tasks]
        if not running:
            return
        done = self.rng.sample(running, self.rng.randint(1, min(4, len(running))))
        for w, t in done:
            self.held[w].remove(t)
            self.completed.add(t)
        self.apply(self.s.complete([t for _, t in done]))

    def run(self, steps: int) -> None:
        for _ in range(3):
            self.add_worker()
        for _ in range(steps):
            r = self.rng.random()
            if r < 0.30:
                self.submit(1 if self.rng.random() < 0.5 else self.rng.randint(2, 8))
            elif r < 0.80:
                self.complete_some()
            elif r < 0.88:
                self.add_worker()
            elif r < 0.94 and len(self.held) > 1:
                self.remove_worker()
            elif len(self.held) > 0:
                self.restart_worker()
            self.check()
        # drain: no new work or failures, just completions
        if not self.held:
            self.add_worker()
        for _ in range(100_000):
            if self.s.running == 0 and self.s.queued == 0:
                break
            self.complete_some()
            self.check()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_randomized_simulation_invariants(seed, prefetch):
    sim = _Sim(seed, prefetch)
    sim.run(steps=1500)
    assert sim.s.running == 0 and sim.s.queued == 0
    # every task either completed or was lost on a worker (and then resubmitted as a new task)
    assert sim.completed | sim.lost == set(sim.submitted)
    assert not sim.completed & sim.lost
    # no task was dispatched more than once
    assert max(sim.dispatch_count.values()) == 1
    assert set(sim.dispatch_count) >= sim.completed
    assert len(sim.submitted) > 200  # the simulation really did something
    assert sim.lost, "the simulation should have exercised worker loss"
    assert sim.single_dispatches > 50


def test_randomized_fifo_without_failures():
    """With one worker and no failures, tasks start in submission order."""
    rng = random.Random(42)
    s = TaskScheduler(prefetch=2)
    s.add_worker("A", "h")
    started: List[int] = []
    held: List[int] = []
    next_id = 0
    for _ in range(500):
        if rng.random() < 0.5:
            n = rng.randint(1, 5)
            for d in s.submit(list(range(next_id, next_id + n))):
                held.extend(d.task_ids)
                started.extend(d.task_ids)
            next_id += n
        elif held:
            done = held.pop(0)
            for d in s.complete([done]):
                held.extend(d.task_ids)
                started.extend(d.task_ids)
        assert len(held) <= 3
    assert started == list(range(len(started)))
    assert len(started) > 100
