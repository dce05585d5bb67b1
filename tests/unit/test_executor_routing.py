"""DragonExecutor without a runtime: waiting tasks and size checks as servers connect, results
making room (its TaskTable, futures.py), the block command (its BlockWatch, blocks.py).
(The router's own rules: tests/unit/test_routing.py.)"""
from concurrent.futures import Future

import pytest
from parsl.executors.errors import InvalidResourceSpecification

from parsl_dragon.core.spec import normalize_spec
from parsl_dragon.driver.executor import DragonExecutor
from parsl_dragon.driver.links import ServerLink
from parsl_dragon.wire import protocol as p


class RecordingClient:
    def __init__(self):
        self.sent = []

    def send_task(self, server_id, entry, payload):
        self.sent.append((server_id, entry.task_id))

    def disconnect(self, server_id, message=None):
        self.sent.append((server_id, "disconnect"))


def link(server_id="s1", nodes=("n1",), cores=(4,), workers=1):
    welcome = p.Welcome(server_id=server_id, host="n1", parsl_version="x", python_version="3.11",
                        nodes=list(nodes), workers=workers, cores=list(cores), gpus=[0] * len(nodes))
    return ServerLink(info=None, welcome=welcome, owner=True, socket=None, monitor=None)


def held(executor, task_id, spec):
    """A task submitted before any server connected: registered, waiting in the router."""
    future = Future()
    executor._tasks[task_id] = future
    assert executor._router.submit(task_id, normalize_spec(spec), b"payload") == []
    return future


def test_held_task_too_large_for_the_new_server_fails_and_the_rest_are_sent():
    executor = DragonExecutor()
    executor._client = RecordingClient()
    too_big = held(executor, 1, {"num_nodes": 2, "ranks_per_node": 1, "num_ranks": 2, "pmi": "none"})
    fine = held(executor, 2, {})
    executor._table.add_server(link(), block_id="0")
    with pytest.raises(InvalidResourceSpecification, match="num_nodes"):
        too_big.result(timeout=1)
    assert not fine.done() and executor._client.sent == [("s1", 2)]
    assert 1 not in executor._tasks and not executor._router.pending


def test_block_command_carries_the_rank_startup_timeout(tmp_path, monkeypatch):
    import shlex

    from parsl_dragon.driver.settings import resolve_settings
    from parsl_dragon.vocabulary import ENV_RANK_STARTUP_TIMEOUT

    monkeypatch.setenv(ENV_RANK_STARTUP_TIMEOUT, "-1")
    executor = DragonExecutor(rank_startup_timeout_ms=450_000)
    executor.run_dir = str(tmp_path)
    executor.settings = resolve_settings(rank_startup_timeout_ms=executor.rank_startup_timeout_ms)
    argv = shlex.split(executor._get_launch_command("0"))
    assert argv[argv.index("--rank-startup-timeout-ms") + 1] == "450000", "the argument beats the variable"
    executor.settings = resolve_settings()
    argv = shlex.split(executor._get_launch_command("1"))
    assert argv[argv.index("--rank-startup-timeout-ms") + 1] == "-1", "the variable's -1 means wait forever"


def results(*task_ids):
    return p.TaskResults(results=[p.TaskResult(task_id=t, status=p.FAILED, error_type="X", error="")
                                  for t in task_ids], payloads=[b""] * len(task_ids))


def test_a_block_that_connects_later_gets_the_waiting_tasks_and_results_make_room():
    executor = DragonExecutor(prefetch_capacity=0)
    executor._client = RecordingClient()
    futures = [held(executor, task_id, {}) for task_id in range(1, 5)]
    executor._table.add_server(link("first"), block_id="0")
    assert executor._client.sent == [("first", 1)]
    executor._table.add_server(link("late"), block_id="1")
    assert executor._client.sent == [("first", 1), ("late", 2)], "the late block takes the oldest waiting task"
    executor._table.on_results("late", results(2))
    assert executor._client.sent[-1] == ("late", 3)
    assert futures[1].exception(timeout=1) is not None and not futures[2].done()


def test_prefetch_capacity_must_not_be_negative():
    from parsl_dragon.errors import ConfigurationError
    with pytest.raises(ConfigurationError, match="prefetch_capacity"):
        DragonExecutor(prefetch_capacity=-1)


def test_available_accelerators_are_checked_at_construction_and_kept_for_repr():
    from parsl_dragon.errors import ConfigurationError
    with pytest.raises(ConfigurationError, match="available_accelerators: device id '0 1'"):
        DragonExecutor(available_accelerators=["0 1"])
    executor = DragonExecutor(available_accelerators=["0.0", "0.1"])
    assert executor._accelerators == ("0.0", "0.1") and "available_accelerators=['0.0', '0.1']" in repr(executor)
    assert DragonExecutor(available_accelerators=2)._accelerators == ("0", "1")


class ControlClient(RecordingClient):
    def __init__(self):
        super().__init__()
        self.control = []

    def send(self, server_id, message):
        self.control.append((server_id, message))


def ok(task_id):
    from parsl.serialize import serialize
    return p.TaskResult(task_id=task_id, status=p.OK), serialize(task_id * 10)


def test_an_outcome_counts_only_from_the_server_the_task_was_routed_to():
    executor = DragonExecutor()
    executor._client = RecordingClient()
    executor._table.add_server(link("s1"), block_id="0")
    executor._table.add_server(link("s2"), block_id="1")
    futures = {}
    for task_id in (1, 2):
        futures[task_id] = Future()
        executor._tasks[task_id] = futures[task_id]
        executor._send(executor._router.submit(task_id, normalize_spec({}), b"payload"))
    where = {task_id: server for server, task_id in executor._client.sent}
    other = {"s1": "s2", "s2": "s1"}
    forged, payload = ok(1)
    executor._table.on_results(other[where[1]], p.TaskResults(results=[forged], payloads=[payload]))
    assert not futures[1].done(), "a server cannot resolve a task it was never given"
    real, payload = ok(1)
    executor._table.on_results(where[1], p.TaskResults(results=[real], payloads=[payload]))
    assert futures[1].result() == 10
    again, payload = ok(1)
    executor._table.on_results(where[1], p.TaskResults(results=[again], payloads=[payload]))  # a duplicate: ignored
    assert futures[1].result() == 10 and not futures[2].done()


def test_a_reconnected_link_syncs_the_tasks_still_out_at_that_server():
    executor = DragonExecutor()
    executor._client = ControlClient()
    executor._table.add_server(link("s1", workers=4), block_id="0")
    for task_id in (3, 1, 2):
        executor._tasks[task_id] = Future()
        executor._send(executor._router.submit(task_id, normalize_spec({}), b"payload"))
    executor._on_reconnected("s1")
    [(server_id, message)] = executor._client.control
    assert server_id == "s1" and isinstance(message, p.Sync) and message.task_ids == [1, 2, 3]
    executor._on_reconnected("gone")  # a server already forgotten: nothing to sync
    assert len(executor._client.control) == 1


def test_task_lost_from_a_sync_fails_the_future_with_task_lost():
    from parsl_dragon.errors import TASK_LOST, TaskLost
    executor = DragonExecutor()
    executor._client = RecordingClient()
    executor._table.add_server(link("s1"), block_id="0")
    future = Future()
    executor._tasks[1] = future
    executor._send(executor._router.submit(1, normalize_spec({}), b"payload"))
    executor._table.on_results("s1", p.TaskResults(results=[p.TaskResult(
        task_id=1, status=p.FAILED, error_type=TASK_LOST, error="lost in flight")], payloads=[b""]))
    with pytest.raises(TaskLost, match="lost in flight"):
        future.result()


def test_an_argument_over_max_payload_bytes_is_refused_at_submit():
    from parsl_dragon.driver.settings import resolve_settings
    from parsl_dragon.errors import PayloadTooLarge
    executor = DragonExecutor(max_payload_bytes=10_000)
    executor.settings = resolve_settings(max_payload_bytes=executor.max_payload_bytes, env={})
    executor._client = RecordingClient()
    executor._started = True
    with pytest.raises(PayloadTooLarge, match=r"packed task \(len with its arguments\) is [\d,]+ bytes .* over "
                                              r"max_payload_bytes 10,000"):
        executor.submit(len, {}, b"z" * 20_000)
    assert executor.outstanding() == 0 and executor._client.sent == []
    assert executor.submit(len, {}, b"z").parsl_executor_task_id == 1


def test_a_connection_file_naming_another_server_key_is_refused_before_connecting():
    from parsl_dragon.errors import AuthenticationFailed
    from parsl_dragon.wire.connection import ConnectionInfo
    executor = DragonExecutor()
    executor._server_key = "our-server-key"
    info = ConnectionInfo(protocol=p.PROTOCOL_VERSION, address="tcp://127.0.0.1:1", server_public_key="theirs",
                          host="h", pid=1, launcher_pid=None, job_id=None, block_id="0", server_id="x",
                          created=0.0, log_path="/x")
    with pytest.raises(AuthenticationFailed, match="is not the server key in"):
        executor._connect(info, owner=True)  # no client exists: reaching connect() would fail differently


def test_a_lost_server_fails_its_tasks_as_server_lost_and_marks_its_block_failed():
    from parsl.jobs.states import JobState

    from parsl_dragon.errors import ServerLost
    executor = DragonExecutor()
    executor._client = RecordingClient()
    executor._table.add_server(link("s1"), block_id="0")
    future = executor._table.submit(normalize_spec({}), b"payload")
    executor._on_server_lost("s1", "lease expired")
    with pytest.raises(ServerLost, match="server s1 on n1 \\(block 0\\) was lost: lease expired"):
        future.result(timeout=1)
    assert executor._simulated_status["0"].state == JobState.FAILED and not executor._servers
    executor._on_server_lost("s1", "again")  # already forgotten: nothing happens
    assert executor.outstanding() == 0


def test_a_job_seen_ended_before_the_lease_expires_fails_its_tasks_as_server_lost_first():
    """Parsl's status poll may see a block's job end before the server's lease expires: its tasks
    still fail with ServerLost (retryable), and the block error handler then sees the loss."""
    from parsl.jobs.states import JobState, JobStatus

    from parsl_dragon.errors import ServerLost
    seen = []
    executor = DragonExecutor(block_error_handler=lambda ex, status: seen.append((
        [f.exception() for f in futures], dict(status))))
    executor._client = RecordingClient()
    executor._table.add_server(link("s1"), block_id="0")
    futures = [executor._table.submit(normalize_spec({}), b"payload")]
    executor.handle_errors({"0": JobStatus(JobState.FAILED, "EXIT CODE: 247\nSTDOUT: parsl-dragon: block of 1 node")})
    [(exceptions, status)] = seen
    assert isinstance(exceptions[0], ServerLost), "the task failed before the handler ran"
    assert "its block's job ended (FAILED: EXIT CODE: 247)" in str(exceptions[0])
    assert status["0"].state == JobState.FAILED and "lost" in status["0"].message
    assert ("s1", "disconnect") in executor._client.sent and not executor._servers
    executor.handle_errors({"0": JobStatus(JobState.FAILED, "again")})  # nothing left to lose
    assert len(seen) == 2


def test_the_table_numbers_tasks_and_hands_back_open_futures_when_cleared():
    executor = DragonExecutor(prefetch_capacity=0)
    executor._client = RecordingClient()
    executor._table.add_server(link("s1"), block_id="0")
    first, second = (executor._table.submit(normalize_spec({}), b"p") for _ in range(2))
    assert (first.parsl_executor_task_id, second.parsl_executor_task_id) == (1, 2)
    assert executor._client.sent == [("s1", 1)] and executor._table.block_tasks("0") == {1}
    assert executor._table.has_server("0") and not executor._table.has_server("1")
    assert executor._table.clear() == [first, second] and executor.outstanding() == 0


def test_available_accelerators_take_htex_types_only():
    from typeguard import TypeCheckError
    with pytest.raises(TypeCheckError):
        DragonExecutor(available_accelerators=[0, 1])  # HTEX's type: an int or a sequence of strings
