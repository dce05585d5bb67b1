"""TaskRouter (routing.py), pure: windows per server, the waiting queue, size checks, no starvation."""
import pytest
from parsl.executors.errors import InvalidResourceSpecification

from parsl_dragon.core.spec import TaskSpec
from parsl_dragon.driver.client import ServerLink
from parsl_dragon.driver.routing import TaskRouter
from parsl_dragon.wire import protocol as p

SERIAL = TaskSpec()
WIDE = TaskSpec(num_nodes=1, ranks_per_node=4, num_ranks=4, pmi="none")
TWO_NODES = TaskSpec(num_nodes=2, ranks_per_node=1, num_ranks=2, pmi="none")


def link(server_id="s1", nodes=("n1",), cores=(4,), workers=1):
    welcome = p.Welcome(server_id=server_id, host="n1", parsl_version="x", python_version="3.11",
                        nodes=list(nodes), workers=workers, cores=list(cores), gpus=[0] * len(nodes))
    return ServerLink(info=None, welcome=welcome, owner=True, socket=None, monitor=None)


def sent(sends):
    return [(send.server_id, send.task_id) for send in sends]


def waiting(router):
    return [task_id for task_id, *_ in router.pending]


def test_a_server_holds_workers_plus_prefetch_and_the_rest_wait_for_room():
    router = TaskRouter(prefetch=1)
    router.add(link("a", workers=2), "0")
    out = [sent(router.submit(t, SERIAL, b"")) for t in range(1, 6)]
    assert out == [[("a", 1)], [("a", 2)], [("a", 3)], [], []], "2 workers + 1 prefetched"
    assert waiting(router) == [4, 5]
    assert sent(router.finished("a", [2])) == [("a", 4)] and waiting(router) == [5]
    assert router.servers["a"].tasks == {1, 3, 4}


def test_a_new_task_queues_behind_waiting_ones_instead_of_overtaking_them():
    router = TaskRouter(prefetch=0)
    router.add(link("a"), "0")
    router.submit(1, SERIAL, b"")
    router.submit(2, SERIAL, b"")
    router.finished("a", [1])           # room for task 2, which gets it
    assert sent(router.submit(3, SERIAL, b"")) == [] and waiting(router) == [3]


def test_a_server_that_connects_later_gets_the_waiting_tasks():
    router = TaskRouter(prefetch=0)
    router.add(link("first"), "0")
    for task_id in range(1, 5):
        router.submit(task_id, SERIAL, b"")
    sends, misfits = router.add(link("late"), "1")
    assert sent(sends) == [("late", 2)] and misfits == [], "the late block takes the oldest waiting task"
    assert sent(router.finished("late", [2])) == [("late", 3)]


def test_least_loaded_server_wins():
    router = TaskRouter(prefetch=10)
    router.add(link("a", workers=1), "0")
    router.add(link("b", workers=4), "1")
    out = sent(sum((router.submit(t, SERIAL, b"") for t in range(1, 6)), []))
    assert [server for server, _ in out] == ["a", "b", "b", "b", "b"], "load = tasks in flight per worker"


def test_a_task_whose_server_is_full_does_not_hold_back_tasks_for_another():
    router = TaskRouter(prefetch=0)
    router.add(link("wide", cores=(8,)), "0")
    router.add(link("narrow", cores=(1,)), "1")
    out = sent(sum((router.submit(t, spec, b"") for t, spec in [(1, WIDE), (2, WIDE), (3, SERIAL), (4, SERIAL)]), []))
    assert out == [("wide", 1), ("narrow", 3)], "task 2 waits for 'wide'; task 3 goes past it"
    assert sent(router.finished("wide", [1])) == [("wide", 2)], "the oldest waiting task gets the freed room"
    assert waiting(router) == [4]


def test_a_stopping_server_takes_no_task_and_the_task_waits_for_the_next():
    router = TaskRouter(prefetch=5)
    router.add(link("dying"), "0")
    router.servers["dying"].link.stopping = "server stopping: signal SIGTERM"
    assert sent(router.submit(1, SERIAL, b"")) == [] and waiting(router) == [1], "held, not lost"
    sends, _ = router.add(link("next"), "1")
    assert sent(sends) == [("next", 1)] and not router.pending


def test_too_large_for_every_server_fails_at_submit_and_changes_nothing():
    router = TaskRouter(prefetch=0)
    router.add(link("one-node"), "0")
    with pytest.raises(InvalidResourceSpecification, match="num_nodes"):
        router.submit(1, TWO_NODES, b"")
    assert not router.pending and router.servers["one-node"].tasks == set()


def test_tasks_held_before_any_server_fail_at_connect_if_it_cannot_hold_them():
    router = TaskRouter(prefetch=0)
    assert sent(router.submit(1, TWO_NODES, b"")) == [] and sent(router.submit(2, SERIAL, b"")) == []
    sends, misfits = router.add(link("one-node"), "0")
    assert sent(sends) == [("one-node", 2)]
    assert [task_id for task_id, _ in misfits] == [1] and "num_nodes" in str(misfits[0][1])
    assert not router.pending


def test_a_task_that_fits_only_a_lost_server_waits_for_another_block():
    router = TaskRouter(prefetch=0)
    router.add(link("two", nodes=("n1", "n2"), cores=(4, 4)), "0")
    router.add(link("one"), "1")
    router.submit(1, TWO_NODES, b"")
    router.submit(2, TWO_NODES, b"")   # waits: "two" is full
    assert router.remove("two").tasks == {1}
    assert router.drain() == [] and waiting(router) == [2], "kept until a server that fits connects"
    sends, misfits = router.add(link("two-again", nodes=("m1", "m2"), cores=(4, 4)), "2")
    assert sent(sends) == [("two-again", 2)] and misfits == []


def test_results_from_a_forgotten_server_are_harmless():
    router = TaskRouter(prefetch=0)
    assert router.finished("gone", [1, 2]) == []


def test_draining_many_waiting_tasks_is_linear():
    router = TaskRouter(prefetch=0)
    router.add(link("a", workers=1000), "0")
    router.servers["a"].tasks.update(range(-1000, 0))  # full
    for task_id in range(1, 20_001):
        router.submit(task_id, SERIAL, b"")
    assert len(router.pending) == 20_000
    sends = router.finished("a", list(range(-1000, 0)))
    assert [s.task_id for s in sends] == list(range(1, 1001)) and len(router.pending) == 19_000
