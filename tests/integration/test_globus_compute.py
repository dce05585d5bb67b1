"""DragonEngine on a real Dragon runtime, offline: tasks packed as the Globus Compute service packs
them (the SDK's ComputeSerializer + messagepack), results unpacked as it unpacks them.

One engine (a local block: 3 workers, 4 cores, GPU ids "0" and "1") serves most tests; the YAML
path runs in a fresh process as a user endpoint does; the interchange test runs the real
``EndpointInterchange`` with its AMQP publisher and subscriber replaced by in-memory ones.
"""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from concurrent.futures import Future

import pytest
from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import EPStatusReport, Result, Task
from globus_compute_common.tasks import TaskState
from globus_compute_endpoint.endpoint import interchange as interchange_module
from globus_compute_endpoint.endpoint.config.config import UserEndpointConfig
from globus_compute_endpoint.engines.base import GCFuture
from globus_compute_sdk.sdk.mpi_function import MPIFunction
from globus_compute_sdk.serialize import ComputeSerializer
from parsl.jobs.states import JobState
from parsl.providers import LocalProvider

from parsl_dragon.globus_compute.engine import DragonEngine
from tests import leaks

SERDE = ComputeSerializer()
RESULT_TIMEOUT = 120


def pack(func, *args, **kwargs):
    task_id = uuid.uuid4()
    buffer = SERDE.pack_buffers([SERDE.serialize(func), SERDE.serialize(args), SERDE.serialize(kwargs)])
    return task_id, messagepack.pack(Task(task_id=task_id, task_buffer=buffer))


def submit(engine, func, *args, spec=None, **kwargs):
    """Submit as the interchange does; the GCFuture records the blocks it was reported running on."""
    task_id, packed = pack(func, *args, **kwargs)
    future = GCFuture(task_id)
    future.placements = []
    future.bind("block_id", lambda f, block: f.placements.append((block, f.job_id)))
    engine.submit(future, packed, resource_specification=spec or {})
    return future


def outcome(future) -> Result:
    result = messagepack.unpack(future.result(timeout=RESULT_TIMEOUT))
    assert isinstance(result, Result)
    return result


def value(future):
    result = outcome(future)
    assert not result.is_error, result.data
    return SERDE.deserialize(result.data)


def exec_window(result: Result):
    """(start, end) in seconds of the function's run on its worker, from the Result's own transitions."""
    stamps = {s.state: s.timestamp / 1e9 for s in result.task_statuses}
    return stamps[TaskState.EXEC_START], stamps[TaskState.EXEC_END]


# ---- functions sent to the endpoint (serialized by source, as a user's are) --------------------

def add(a, b):
    return a + b


def divide(a, b):
    return a / b


def sleep_then_pid(seconds):
    import os
    import time
    time.sleep(seconds)
    return os.getpid()


def visible_devices():
    import os
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getcwd()


def die_once(marker):
    import os
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(17)  # the worker process is gone: a system failure, not the function's error
    return "second attempt"


# ---- the shared engine ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    before = leaks.snapshot()
    run_dir = tmp_path_factory.mktemp("endpoint")
    engine = DragonEngine(workers_per_node=3, cores_per_node=4, available_accelerators=["0", "1"],
                          heartbeat_period=1.0, strategy="none")
    engine.start(endpoint_id=uuid.uuid4(), run_dir=str(run_dir))
    try:
        yield engine
    finally:
        engine.shutdown(block=True)
        left = leaks.wait_for_no_leaks(before, timeout=30)
        assert not left, "left behind by the engine:\n" + leaks.describe(left)


def test_a_function_runs_and_is_reported_running_on_its_block(engine):
    future = submit(engine, add, 2, b=3)
    assert value(future) == 5
    assert future.placements and future.placements[0] == ("0", engine.executor.blocks_to_job_id["0"])
    assert outcome(future).details["endpoint_id"] == str(engine.endpoint_id)


def test_a_raising_function_comes_back_as_an_error_result(engine):
    result = outcome(submit(engine, divide, 1, 0))
    assert result.is_error
    assert "ZeroDivisionError" in result.data
    assert add(1, 1) == 2 and value(submit(engine, add, 1, 1)) == 2  # the worker goes on


def test_an_mpi_function_runs_its_ranks_packed_beside_serial_functions(engine):
    """2 ranks on 2 of the node's 4 cores while two serial functions use the other two."""
    mpi = submit(engine, MPIFunction("sh -c 'sleep 2; echo rank-done'"), spec={"num_nodes": 1, "ranks_per_node": 2})
    serial = [submit(engine, sleep_then_pid, 2) for _ in range(2)]
    shell = value(mpi)
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split().count("rank-done") == 2
    pids = [value(f) for f in serial]
    assert len(set(pids)) == 2  # two workers at once
    windows = [exec_window(outcome(f)) for f in [mpi, *serial]]
    assert max(start for start, _ in windows) < min(end for _, end in windows), windows  # all three overlapped


def test_a_gpu_function_sees_only_its_device_in_the_working_dir(engine):
    devices, cwd = value(submit(engine, visible_devices, spec={"gpus_per_rank": 1}))
    assert devices in ("0", "1")
    assert cwd == str(engine.working_dir)
    assert value(submit(engine, visible_devices))[0] in (None, "")  # a task without GPUs sees none


def test_a_resource_specification_the_block_cannot_hold_is_an_error_result(engine):
    result = outcome(submit(engine, add, 1, 2, spec={"num_nodes": 3, "ranks_per_node": 1}))
    assert result.is_error and "num_nodes" in result.data


def test_a_lost_worker_is_retried_as_the_base_class_defines(engine, tmp_path):
    engine.max_retries_on_system_failure = 1
    try:
        assert value(submit(engine, die_once, str(tmp_path / "retried"))) == "second attempt"
    finally:
        engine.max_retries_on_system_failure = 0
    result = outcome(submit(engine, die_once, str(tmp_path / "not-retried")))
    assert result.is_error and "WorkerLost" in result.data


def test_the_status_report_has_the_blocks_workers_and_tasks(engine):
    futures = [submit(engine, add, i, i) for i in range(4)]
    assert [value(f) for f in futures] == [0, 2, 4, 6]
    deadline = time.monotonic() + 10
    while True:  # running/queued come from the server's heartbeat (every second here)
        state = engine.get_status_report().global_state
        if state["idle_workers"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    report = engine.get_status_report()
    assert isinstance(messagepack.unpack(messagepack.pack(report)), EPStatusReport)
    state = report.global_state
    assert state["engine_type"] == "DragonEngine"
    assert (state["managers"], state["total_workers"], state["idle_workers"]) == (1, 3, 3)
    assert (state["outstanding_tasks"], state["pending_tasks"]) == (0, 0)
    assert state["total_tasks"] >= 4
    block = state["blocks"]["0"]
    assert block["job_id"] == str(engine.executor.blocks_to_job_id["0"])
    assert (block["workers"], block["running"], block["in_flight"]) == (3, 0, 0)
    assert list(state["node_info"]) == [block["job_id"]]


def test_parsls_job_status_poller_scales_blocks_out_for_work_and_in_when_idle(no_leaks, tmp_path):
    engine = DragonEngine(provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=1), workers_per_node=1,
                          heartbeat_period=1.0, job_status_kwargs={"strategy": "simple", "strategy_period": 0.2,
                                                                   "max_idletime": 1.0})
    engine.start(endpoint_id=uuid.uuid4(), run_dir=str(tmp_path))
    try:
        assert engine.get_status_report().global_state["blocks"] == {}  # nothing until there is work
        assert value(submit(engine, add, 20, 22)) == 42
        assert engine.get_status_report().global_state["managers"] == 1
        deadline = time.monotonic() + 60
        while not engine.executor.status_facade["0"].terminal and time.monotonic() < deadline:
            time.sleep(0.2)
        assert engine.executor.status_facade["0"].state == JobState.SCALED_IN  # idle for max_idletime
        assert engine.get_status_report().global_state["blocks"] == {}
    finally:
        engine.shutdown(block=True)


def test_blocks_that_cannot_start_stop_the_endpoint_with_their_error(no_leaks, tmp_path):
    """Every block fails (its job exits before Dragon starts): Parsl's block error handler puts the
    executor in a bad state, the engine's executor_exception (which the interchange watches) says
    why, and the waiting function comes back as an error result, not a hang."""
    engine = DragonEngine(provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1,
                                                 worker_init="echo no-such-environment >&2; exit 3"),
                          heartbeat_period=1.0, job_status_kwargs={"strategy": "simple", "strategy_period": 0.2})
    engine.start(endpoint_id=uuid.uuid4(), run_dir=str(tmp_path))
    try:
        result = outcome(submit(engine, add, 1, 2))
        assert result.is_error
        deadline = time.monotonic() + 60
        while engine.executor_exception is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert engine.executor_exception is not None
        assert "did not start a Dragon server" in str(engine.executor_exception)
        assert "Logs:" in str(engine.executor_exception) and "boot.log" in str(engine.executor_exception)
        assert "did not start a Dragon server" in result.data  # the function's error result says why too
    finally:
        engine.shutdown(block=True)


# ---- the endpoint's own paths -----------------------------------------------------------------

YAML_ENDPOINT = textwrap.dedent('''
    import sys, uuid
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml
    from globus_compute_endpoint.engines.base import GCFuture
    from globus_compute_common import messagepack
    from globus_compute_common.messagepack.message_types import Task
    from globus_compute_sdk.serialize import ComputeSerializer

    assert "parsl_dragon.globus_compute.engine" not in sys.modules
    config = load_config_yaml("""
    engine:
      type: DragonEngine
      workers_per_node: 1
      provider:
        type: LocalProvider
        init_blocks: 1
        min_blocks: 0
        max_blocks: 1
    """)
    engine = config.engine
    engine.start(endpoint_id=uuid.uuid4(), run_dir=sys.argv[1])
    try:
        serde = ComputeSerializer()
        def double(x):
            return 2 * x
        task_id = uuid.uuid4()
        buffer = serde.pack_buffers([serde.serialize(double), serde.serialize((21,)), serde.serialize({})])
        future = GCFuture(task_id)
        engine.submit(future, messagepack.pack(Task(task_id=task_id, task_buffer=buffer)), {})
        result = messagepack.unpack(future.result(timeout=120))
        print(type(engine).__name__, serde.deserialize(result.data))
    finally:
        engine.shutdown(block=True)
''')


def test_an_endpoint_yaml_naming_dragon_engine_runs_a_function_in_a_fresh_process(no_leaks, tmp_path):
    out = subprocess.run([sys.executable, "-c", YAML_ENDPOINT, str(tmp_path)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["DragonEngine", "42"]


class InMemorySubscriber:
    """Stands in for the AMQP task queue: hands the interchange the tasks it was given."""
    tasks = []
    acked = []

    def __init__(self, cred_fn, pending_task_queue, thread_name=None):
        self.pending = pending_task_queue

    def __enter__(self):
        for n, (headers, body) in enumerate(self.tasks):
            self.pending.put((n, headers, body))
        return self

    def __exit__(self, *exc):
        return False

    def ack(self, delivery_tag):
        self.acked.append(delivery_tag)


class InMemoryPublisher:
    """Stands in for the AMQP result and heartbeat queues: keeps what is published."""
    published = []

    def __init__(self, cred_fn):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def publish(self, message):
        self.published.append(messagepack.unpack(message))
        done = Future()
        done.set_result(None)
        return done


def test_the_engine_inside_a_real_endpoint_interchange(no_leaks, tmp_path, monkeypatch):
    engine = DragonEngine(workers_per_node=2, heartbeat_period=1.0, strategy="none")
    tasks = [pack(add, i, 10) for i in range(3)] + [pack(divide, 1, 0)]
    function_id = str(uuid.uuid4())
    monkeypatch.setattr(InMemorySubscriber, "tasks", [
        ({"task_uuid": str(task_id), "function_uuid": function_id}, body) for task_id, body in tasks])
    monkeypatch.setattr(InMemorySubscriber, "acked", [])
    monkeypatch.setattr(InMemoryPublisher, "published", [])
    monkeypatch.setattr(interchange_module, "TaskQueueSubscriber", InMemorySubscriber)
    monkeypatch.setattr(interchange_module, "ResultPublisher", InMemoryPublisher)
    endpoint_id = uuid.uuid4()
    ix = interchange_module.EndpointInterchange(
        config=UserEndpointConfig(engine=engine, heartbeat_period=1), cred_fn=lambda: {"amqp_creds": {}},
        ep_info={}, logdir=str(tmp_path), endpoint_id=endpoint_id, endpoint_dir=str(tmp_path))

    def results():
        return {m.task_id: m for m in InMemoryPublisher.published if isinstance(m, Result)}

    def stop_when_done():
        deadline = time.monotonic() + RESULT_TIMEOUT
        while len(results()) < len(tasks) and time.monotonic() < deadline:
            time.sleep(0.1)
        ix.stop()

    handlers = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM)}
    threading.Thread(target=stop_when_done, daemon=True).start()
    try:
        ix.start()  # the main thread, as in the endpoint (it installs signal handlers); returns after stop()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        engine.shutdown()
    got = results()
    assert sorted(InMemorySubscriber.acked) == [0, 1, 2, 3]
    assert [SERDE.deserialize(got[task_id].data) for task_id, _ in tasks[:3]] == [10, 11, 12]
    assert got[tasks[3][0]].is_error and "ZeroDivisionError" in got[tasks[3][0]].data
    reports = [m for m in InMemoryPublisher.published if isinstance(m, EPStatusReport)]
    assert reports and reports[0].endpoint_id == endpoint_id
    assert reports[-1].global_state["engine_type"] == "DragonEngine"
    assert not engine._engine_ready  # the interchange's cleanup shut it down
    assert os.path.isdir(tmp_path / "tasks_working_dir")
