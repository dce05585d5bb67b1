"""TaskScheduler: slot table + persistent workers, as events in -> assignments out."""
import random

import pytest
from parsl.executors.errors import InvalidResourceSpecification

from parsl_dragon.core.placement import NodeSlots, Placement
from parsl_dragon.core.scheduler import Assignment, TaskScheduler
from parsl_dragon.core.spec import TaskSpec, normalize_spec

SERIAL = TaskSpec()
MPI2 = normalize_spec({"num_nodes": 1, "ranks_per_node": 2, "pmi": "none"})
MPI_2x2 = normalize_spec({"num_nodes": 2, "ranks_per_node": 2, "pmi": "none"})


def scheduler(nodes=(("n1", 4),), workers=2):
    s = TaskScheduler([NodeSlots(h, c) for h, c in nodes])
    for host, _ in nodes:
        for i in range(workers):
            assert s.worker_ready(f"{host}-w{i}", host) == []
    return s


def test_no_task_starts_before_a_worker_is_ready():
    s = TaskScheduler([NodeSlots("n1", 4)])
    assert s.submit(1, SERIAL) == []
    assert s.queued == 1
    assert s.worker_ready("w", "n1") == [Assignment("w", 1, None)], "a serial task gets no placement"


def test_serial_tasks_fill_idle_workers_then_queue():
    s = scheduler(workers=2)
    got = s.submit(1, SERIAL) + s.submit(2, SERIAL) + s.submit(3, SERIAL)
    assert [a.task_id for a in got] == [1, 2] and len({a.worker_id for a in got}) == 2
    assert (s.running, s.queued) == (2, 1)
    [next_] = s.finished(1)
    assert next_ == Assignment(got[0].worker_id, 3), "the freed worker takes the queued task"


def test_a_slot_released_early_frees_nothing_more_when_its_result_comes():
    s = scheduler(workers=1)
    [first] = s.submit(1, SERIAL) + s.submit(2, SERIAL) + s.submit(3, SERIAL)
    [second] = s.finished(1)  # the worker released its slot: it takes task 2 while task 1's result is stored
    assert second == Assignment(first.worker_id, 2)
    assert s.finished(1) == [] and (s.running, s.queued) == (1, 1), "task 1's result: task 2 still runs"
    assert s.finished(2) == [Assignment(first.worker_id, 3)]


def test_mpi_task_gets_placement_and_reserves_cores():
    s = scheduler(nodes=(("n1", 4),), workers=3)
    [mpi] = s.submit(1, MPI2)
    assert isinstance(mpi.placement, Placement) and mpi.placement.task_id == 1
    assert mpi.placement.hosts == ("n1",) and len(mpi.placement.cores[0]) == 2
    assert [a.task_id for a in s.submit(2, SERIAL) + s.submit(3, SERIAL)] == [2, 3], "2 cores left for serial tasks"
    assert s.submit(4, SERIAL) == [], "no core and no worker left"
    assert [a.task_id for a in s.finished(1)] == [4]


def test_big_mpi_task_waits_for_cores_but_small_ones_backfill():
    s = scheduler(nodes=(("n1", 4),), workers=4)
    [first] = s.submit(1, MPI2)
    three = normalize_spec({"num_nodes": 1, "ranks_per_node": 3, "pmi": "none"})
    assert s.submit(2, three) == [], "needs 3 cores, only 2 free"
    assert [a.task_id for a in s.submit(3, SERIAL)] == [3], "a serial task backfills"
    assert [a.task_id for a in s.finished(3)] == [], "1 free + ... still < 3"
    assert [a.task_id for a in s.finished(1)] == [2]


def test_multi_node_task_spans_distinct_hosts():
    s = scheduler(nodes=(("n1", 2), ("n2", 2)), workers=1)
    [a] = s.submit(1, MPI_2x2)
    assert sorted(a.placement.hosts) == ["n1", "n2"]
    assert s.host_of_worker(a.worker_id) == a.placement.hosts[0], "the app runs on the first host"


def test_a_shape_that_fits_is_not_checked_against_every_node_again(monkeypatch):
    """The per-task scan of all nodes grew a 2,000-node block's cost per task x3: only misfits scan."""
    from parsl_dragon.core import scheduler as module
    s = scheduler(nodes=(("n1", 2), ("n2", 2)), workers=1)
    scans = []
    monkeypatch.setattr(module, "check_fits", lambda spec, nodes: scans.append(len(nodes)))
    for task_id in range(1, 4):
        s.submit(task_id, MPI_2x2)
    assert scans == []
    with pytest.raises(ValueError, match="never fits"):  # the table's own guard, as the stand-in did not raise
        s.submit(4, TaskSpec(cpus_per_rank=3))  # fits no node: scanned (the real check_fits raises, naming keys)
    assert scans == [2]


def test_too_large_or_malformed_requests_are_refused():
    s = scheduler(nodes=(("n1", 4),), workers=1)
    with pytest.raises(InvalidResourceSpecification, match="num_nodes"):
        s.submit(1, MPI_2x2)
    with pytest.raises(InvalidResourceSpecification, match="cpus_per_rank"):
        s.submit(2, TaskSpec(cpus_per_rank=5))
    with pytest.raises(InvalidResourceSpecification):  # a malformed spec never becomes a TaskSpec
        TaskSpec.from_wire({"num_nodes": "two", "ranks_per_node": 1, "num_ranks": 1, "pmi": "none"})
    assert s.queued == 0 and s.running == 0


def test_lost_worker_returns_its_task_and_frees_slots():
    s = scheduler(nodes=(("n1", 2),), workers=2)
    [a] = s.submit(1, MPI2)
    assert s.submit(2, SERIAL) == [], "both cores are taken by the MPI task"
    lost, started = s.worker_lost(a.worker_id)
    assert lost == 1 and [x.task_id for x in started] == [2]
    assert s.workers == 1
    assert s.worker_lost("unknown") == (None, [])


def test_cancel_drops_only_queued_tasks():
    s = scheduler(workers=1)
    s.submit(1, SERIAL)
    s.submit(2, SERIAL)
    s.submit(3, SERIAL)
    dropped, started = s.cancel([1, 2])
    assert dropped == [2] and started == [] and s.queued == 1 and s.running == 1


def test_worker_on_unknown_host_is_rejected():
    s = scheduler()
    with pytest.raises(KeyError):
        s.worker_ready("w", "elsewhere")


def _run_to_the_end(s, running):
    """Finish the running tasks, oldest first, and whatever they let start; nothing stays queued."""
    while running:
        task = min(running)
        del running[task]
        for a in s.finished(task):
            running[a.task_id] = a.worker_id
    assert s.queued == 0, "everything submitted eventually ran"


@pytest.mark.parametrize("seed", range(5))
def test_random_events_keep_workers_and_tasks_consistent(seed):
    rng = random.Random(seed)
    hosts = [(f"n{i}", 4) for i in range(3)]
    s = scheduler(nodes=hosts, workers=2)
    running, next_id, done, mpi = {}, 0, set(), set()
    for _ in range(2000):
        if rng.random() < 0.55:
            next_id += 1
            spec = rng.choice([SERIAL, SERIAL, MPI2, MPI_2x2])
            if spec.is_mpi:
                mpi.add(next_id)
            started = s.submit(next_id, spec)
        elif running:
            task = rng.choice(sorted(running))
            started = s.finished(task)
            done.add(task)
            del running[task]
        else:
            continue
        for a in started:
            assert a.task_id not in running and a.task_id not in done, "no task starts twice"
            assert (a.placement is not None) == (a.task_id in mpi), "MPI tasks, and only they, get a placement"
            assert a.worker_id not in running.values(), "a worker runs one task at a time"
            running[a.task_id] = a.worker_id
        assert s.running == len(running)
    _run_to_the_end(s, running)


def test_a_serial_gpu_task_gets_its_placement_so_its_worker_can_bind_it():
    s = TaskScheduler([NodeSlots("n1", 4, 2)])
    for i in range(2):
        s.worker_ready(f"w{i}", "n1")
    one_gpu = normalize_spec({"gpus_per_rank": 1})
    first, second = s.submit(1, one_gpu) + s.submit(2, one_gpu)
    assert first.placement is not None and second.placement is not None
    assert {first.placement.gpus, second.placement.gpus} == {((0,),), ((1,),)}, "two tasks, two devices"
    assert s.submit(3, one_gpu) == [] and s.queued == 1, "no free device: it waits"
    [third] = s.finished(1)
    assert third.task_id == 3 and third.placement.gpus == ((0,),), "the freed device goes to the next task"


def test_a_retiring_worker_finishes_its_task_then_leaves_and_its_replacement_takes_the_queue():
    s = TaskScheduler([NodeSlots("n1", 4)])
    s.worker_ready("w0", "n1")
    [busy] = s.submit(1, SERIAL)
    assert s.retire("w0") == [] and s.workers == 1, "still running task 1"
    assert s.submit(2, SERIAL) == [] and s.queued == 1, "a retiring worker takes no new task"
    assert s.finished(1) == [] and s.workers == 0, "gone with its last task"
    assert s.worker_ready("w1", "n1") == [Assignment("w1", 2)], "the replacement takes the waiting task"
    assert s.retire("w1") == [] and s.finished(2) == [] and s.workers == 0
    s.worker_ready("w2", "n1")
    assert s.retire("w2") == [] and s.workers == 0, "an idle worker leaves at once"
    assert s.retire("unknown") == []
    assert s.worker_lost("w0") == (None, []), "its exit later is nothing to report"


@pytest.mark.parametrize("seed", range(3))
def test_random_retirements_lose_no_task(seed):
    rng = random.Random(seed)
    s = scheduler(nodes=[("n1", 4), ("n2", 4)], workers=2)
    running, next_id, spare, retired = {}, 0, 0, set()
    for _ in range(1500):
        roll = rng.random()
        if roll < 0.5:
            next_id += 1
            started = s.submit(next_id, rng.choice([SERIAL, MPI2]))
        elif roll < 0.9 and running:
            task = rng.choice(sorted(running))
            del running[task]
            started = s.finished(task)
        elif roll < 0.95 and s.workers:
            leaving = rng.choice(s.worker_ids())
            retired.add(leaving)
            started = s.retire(leaving)
        else:
            spare += 1
            started = s.worker_ready(f"r{spare}", rng.choice(["n1", "n2"]))
        for a in started:
            assert a.worker_id not in running.values(), "a worker runs one task at a time"
            assert a.worker_id not in retired, "a retired worker gets no new task"
            running[a.task_id] = a.worker_id
        assert s.running == len(running)
    for host in ("n1", "n2"):
        for i in range(2):
            for a in s.worker_ready(f"last-{host}-{i}", host):
                running[a.task_id] = a.worker_id
    _run_to_the_end(s, running)
