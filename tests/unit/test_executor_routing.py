"""DragonExecutor routing without a runtime: held tasks, size checks when a server connects."""
from concurrent.futures import Future

import pytest
from parsl.executors.errors import InvalidResourceSpecification

from parsl_dragon import protocol as p
from parsl_dragon.client import ServerLink
from parsl_dragon.executor import DragonExecutor


class RecordingClient:
    def __init__(self):
        self.sent = []

    def send_task(self, server_id, entry, payload):
        self.sent.append((server_id, entry.task_id))


def link(server_id="s1", nodes=("n1",), cores=(4,), workers=1):
    welcome = p.Welcome(server_id=server_id, host="n1", parsl_version="x", python_version="3.11",
                        nodes=list(nodes), workers=workers, cores=list(cores), gpus=[0] * len(nodes))
    return ServerLink(info=None, welcome=welcome, owner=True, socket=None)


def held(executor, task_id, spec):
    future = Future()
    executor._tasks[task_id] = future
    executor._pending.append((task_id, spec, b"payload"))
    return future


def test_held_task_too_large_for_the_new_server_fails_and_the_rest_are_sent():
    executor = DragonExecutor()
    executor._client = RecordingClient()
    too_big = held(executor, 1, {"num_nodes": 2, "ranks_per_node": 1, "num_ranks": 2, "pmi": "none"})
    fine = held(executor, 2, {})
    executor._add_server(link(), block_id="0")
    with pytest.raises(InvalidResourceSpecification, match="num_nodes"):
        too_big.result(timeout=1)
    assert not fine.done() and executor._client.sent == [("s1", 2)]
    assert 1 not in executor._tasks and not executor._pending


def test_task_goes_to_a_server_where_it_fits():
    executor = DragonExecutor()
    executor._client = RecordingClient()
    executor._add_server(link("small", cores=(1,)), block_id="0")
    executor._add_server(link("big", cores=(8,)), block_id="1")
    spec = {"num_nodes": 1, "ranks_per_node": 4, "num_ranks": 4, "pmi": "none"}
    held(executor, 7, spec)
    executor._drain()
    assert executor._client.sent == [("big", 7)]


def test_block_command_carries_the_rank_startup_timeout(tmp_path, monkeypatch):
    import shlex

    from parsl_dragon.settings import ENV_RANK_STARTUP_TIMEOUT, resolve_settings

    monkeypatch.setenv(ENV_RANK_STARTUP_TIMEOUT, "-1")
    executor = DragonExecutor(rank_startup_timeout_ms=450_000)
    executor.run_dir = str(tmp_path)
    executor.settings = resolve_settings(rank_startup_timeout_ms=executor.rank_startup_timeout_ms)
    argv = shlex.split(executor._get_launch_command("0"))
    assert argv[argv.index("--rank-startup-timeout") + 1] == "450.0", "the argument beats the variable"
    executor.settings = resolve_settings()
    argv = shlex.split(executor._get_launch_command("1"))
    assert argv[argv.index("--rank-startup-timeout") + 1] == "-1", "the variable's -1 means wait forever"


def test_a_stopping_server_takes_no_new_task_which_waits_for_the_next_server():
    executor = DragonExecutor()
    executor._client = RecordingClient()
    dying = link("dying")
    executor._add_server(dying, block_id="0")
    dying.stopping = "server stopping: signal SIGTERM"
    held(executor, 1, {})
    executor._drain()
    assert executor._client.sent == [] and [t for t, _, _ in executor._pending] == [1], "held, not lost"
    executor._add_server(link("next"), block_id="1")
    assert executor._client.sent == [("next", 1)] and not executor._pending


def results(*task_ids):
    return p.TaskResults(results=[p.TaskResult(task_id=t, status=p.FAILED, error_type="X", error="")
                                  for t in task_ids], payloads=[b""] * len(task_ids))


def test_a_server_holds_workers_plus_prefetch_and_the_rest_wait_for_room():
    executor = DragonExecutor(prefetch_capacity=1)
    executor._client = RecordingClient()
    executor._add_server(link("a", workers=2), block_id="0")
    for task_id in range(1, 6):
        held(executor, task_id, {})
    executor._drain()
    assert executor._client.sent == [("a", 1), ("a", 2), ("a", 3)], "2 workers + 1 prefetched"
    assert [t for t, _, _ in executor._pending] == [4, 5]
    executor._on_results("a", results(2))
    assert executor._client.sent[-1] == ("a", 4) and [t for t, _, _ in executor._pending] == [5]


def test_a_block_that_connects_later_gets_the_waiting_tasks():
    executor = DragonExecutor(prefetch_capacity=0)
    executor._client = RecordingClient()
    executor._add_server(link("first"), block_id="0")
    for task_id in range(1, 5):
        held(executor, task_id, {})
    executor._drain()
    assert executor._client.sent == [("first", 1)]
    executor._add_server(link("late"), block_id="1")
    assert executor._client.sent == [("first", 1), ("late", 2)], "the late block takes the oldest waiting task"
    executor._on_results("late", results(2))
    assert executor._client.sent[-1] == ("late", 3)


def test_a_task_whose_server_is_full_does_not_hold_back_tasks_for_another():
    executor = DragonExecutor(prefetch_capacity=0)
    executor._client = RecordingClient()
    executor._add_server(link("wide", cores=(8,)), block_id="0")
    executor._add_server(link("narrow", cores=(1,)), block_id="1")
    wide = {"num_nodes": 1, "ranks_per_node": 4, "num_ranks": 4, "pmi": "none"}
    for task_id, spec in [(1, wide), (2, wide), (3, {}), (4, {})]:
        held(executor, task_id, spec)
    executor._drain()
    assert executor._client.sent == [("wide", 1), ("narrow", 3)], "task 2 waits for 'wide'; task 3 goes past it"
    executor._on_results("wide", results(1))
    assert executor._client.sent[-1] == ("wide", 2), "the oldest waiting task gets the freed room first"


def test_prefetch_capacity_must_not_be_negative():
    from parsl_dragon.errors import ConfigurationError
    with pytest.raises(ConfigurationError, match="prefetch_capacity"):
        DragonExecutor(prefetch_capacity=-1)
