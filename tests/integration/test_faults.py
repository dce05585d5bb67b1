"""Fault injection on the real runtime: lost workers, lost servers, lost drivers."""
import os
import signal
import time

import pytest
from parsl import python_app

from parsl_dragon import ServerLost, WorkerLost
from parsl_dragon.wire.connection import connection_path, read_connection


@python_app
def write_pid_then_sleep(path, seconds):
    import os
    import time
    with open(path, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


@python_app
def pid():
    import os
    return os.getpid()


def _wait_for_file(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not (os.path.exists(path) and open(path).read().strip()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)
    return int(open(path).read())


def test_killed_worker_fails_its_task_and_is_replaced(load_dfk, tmp_path):
    load_dfk()
    marker = str(tmp_path / "worker.pid")
    victim = write_pid_then_sleep(marker, 60)
    worker_pid = _wait_for_file(marker)
    os.kill(worker_pid, signal.SIGKILL)
    with pytest.raises(WorkerLost) as info:
        victim.result(timeout=30)
    assert "host" in str(info.value)
    replacement = pid().result(timeout=60)
    assert replacement != worker_pid, "a new worker process took over"


def test_killed_server_fails_outstanding_tasks_quickly(load_dfk, tmp_path):
    server_dir = str(tmp_path / "server")
    dfk = load_dfk(server_path=server_dir, heartbeat_period=1.0, heartbeat_threshold=2)
    marker = str(tmp_path / "worker.pid")
    victim = write_pid_then_sleep(marker, 120)
    _wait_for_file(marker)
    info = read_connection(connection_path(server_dir))
    started = time.monotonic()
    os.kill(info.pid, signal.SIGKILL)
    with pytest.raises(ServerLost):
        victim.result(timeout=30)
    detection = time.monotonic() - started
    print(f"server SIGKILL detected after {detection:.2f}s")
    assert detection < 2 * 2 * 1.0 + 2.0

    # the only block failed: the executor goes to its bad state and later submits fail with it
    deadline = time.monotonic() + 30
    while not dfk.executors["dragon"].bad_state_is_set:
        assert time.monotonic() < deadline, "block failure never reached the executor's error handler"
        time.sleep(0.2)
    with pytest.raises(Exception) as info:
        pid().result(timeout=30)
    assert "lost" in str(info.value)


DRIVER = """
import sys, time, parsl
from parsl import python_app
from parsl_dragon import DragonExecutor

@python_app
def sleepy():
    import time
    time.sleep(600)

parsl.load(parsl.Config(executors=[DragonExecutor(server_path=sys.argv[1], workers_per_node=1,
                                                  heartbeat_period=1.0, heartbeat_threshold=2)],
                        run_dir=sys.argv[2], strategy_period=0.2))
@python_app
def ready():
    return True

assert ready().result(timeout=120)   # the executor holds a session (and so a lease) with its server
future = sleepy()
print("SUBMITTED", flush=True)
time.sleep(600)
"""


def test_killed_driver_takes_server_and_runtime_down(no_leaks, tmp_path):
    import subprocess
    import sys

    from tests import leaks

    server_dir = tmp_path / "server"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), str(server_dir), str(tmp_path / "runinfo")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "SUBMITTED"
        deadline = time.monotonic() + 120
        while not (server_dir / "connection.json").exists():
            assert time.monotonic() < deadline, "server never came up"
            time.sleep(0.2)
        info = read_connection(connection_path(str(server_dir)))
    finally:
        driver.kill()
        driver.wait()
    killed = time.monotonic()
    leftovers = leaks.wait_for_no_leaks(no_leaks, timeout=30)
    print(f"driver SIGKILL: everything gone after {time.monotonic() - killed:.1f}s")
    assert not leftovers, leaks.describe(leftovers)
    assert not (server_dir / "connection.json").exists()
    # Whichever comes first: boot sees the driver gone (the block follows its driver on this
    # host), or the server sees its owner's lease run out.
    boot_log = open(os.path.join(os.path.dirname(info.log_path), "boot.log")).read()
    assert "The block follows its driver" in boot_log or "lost the lease" in open(info.log_path).read()
