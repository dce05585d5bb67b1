"""`parsl-dragon status` / `teardown` against real Dragon runtimes started by a DFK."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from parsl import python_app

from parsl_dragon import ServerLost
from parsl_dragon.host import shm
from parsl_dragon.host.processes import carries_token, is_running, parent_pid, processes_with_token
from parsl_dragon.wire.connection import connection_path, read_connection


@python_app
def add(a, b):
    return a + b


@python_app
def nap(seconds):
    import time
    time.sleep(seconds)
    return seconds


def parsl_dragon(*args, timeout=240):
    """Run the installed console script (as a user would), falling back to ``python -m``."""
    script = os.path.join(os.path.dirname(sys.executable), "parsl-dragon")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "parsl_dragon.cli"]
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=timeout)


def start_server(load_dfk, tmp_path):
    """A DFK whose block's server writes its connection file to ``tmp_path/servers``."""
    server_dir = str(tmp_path / "servers")
    load_dfk(server_path=server_dir)
    assert add(1, 2).result(timeout=180) == 3
    info = read_connection(connection_path(server_dir))
    assert info.block_token and processes_with_token(info.block_token)
    return server_dir, info


def runtime_launcher(info):
    """The `dragon` launcher: the boot process's child carrying the block token."""
    [launcher] = [pid for pid in processes_with_token(info.block_token) if parent_pid(pid) == info.launcher_pid]
    return launcher


def assert_block_gone(server_dir, info, launcher):
    assert not os.path.exists(connection_path(server_dir)), "the connection file must be gone"
    assert processes_with_token(info.block_token) == [], "a process of the block survived"
    assert glob.glob(shm.pool_prefix(launcher) + "*") == [], "the runtime's shm pools survived"
    for pid in (info.pid, launcher):
        assert not carries_token(pid, info.block_token)
    assert not is_running(info.launcher_pid)


def wait_gone(pid, timeout=30.0):
    deadline = time.monotonic() + timeout
    while is_running(pid):
        assert time.monotonic() < deadline, f"pid {pid} did not exit"
        time.sleep(0.1)


def test_status_then_teardown_fails_outstanding_tasks(load_dfk, tmp_path):
    server_dir, info = start_server(load_dfk, tmp_path)
    launcher = runtime_launcher(info)

    status = parsl_dragon("status", server_dir, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    [record] = json.loads(status.stdout)["servers"]
    assert (record["state"], record["server_id"], record["pid"]) == ("live", info.server_id, info.pid)
    text = parsl_dragon("status", server_dir)
    assert text.returncode == 0 and text.stdout.startswith(f"live         server {info.server_id}")

    outstanding = [nap(600) for _ in range(3)]  # one runs, the others wait: none may hang
    time.sleep(1.0)
    started = time.monotonic()
    teardown = parsl_dragon("teardown", server_dir, "--timeout", "60")
    assert teardown.returncode == 0, teardown.stdout + teardown.stderr
    assert "asked the server to shut down" in teardown.stdout
    assert "the server and its runtime exited within" in teardown.stdout
    assert "SIG" not in teardown.stdout, "a graceful shutdown needs no signals"
    for future in outstanding:
        with pytest.raises(ServerLost):
            future.result(timeout=max(5.0, 60 - (time.monotonic() - started)))
    assert_block_gone(server_dir, info, launcher)

    after = parsl_dragon("status", server_dir)
    assert after.returncode == 1 and "no connection files" in after.stderr


def test_teardown_after_boot_process_was_killed(load_dfk, tmp_path):
    server_dir, info = start_server(load_dfk, tmp_path)
    launcher = runtime_launcher(info)
    os.kill(info.launcher_pid, signal.SIGKILL)  # the runtime is orphaned, nobody will clean up after it
    wait_gone(info.launcher_pid)
    assert processes_with_token(info.block_token)

    teardown = parsl_dragon("teardown", server_dir, "--timeout", "60")
    assert teardown.returncode == 0, teardown.stdout + teardown.stderr
    assert "asked the server to shut down" in teardown.stdout
    assert_block_gone(server_dir, info, launcher)


def test_forced_teardown_after_runtime_crash_cleans_processes_and_shm(load_dfk, tmp_path):
    server_dir, info = start_server(load_dfk, tmp_path)
    launcher = runtime_launcher(info)
    assert glob.glob(shm.pool_prefix(launcher) + "*"), "the runtime's pools should exist while it runs"
    for pid in (info.launcher_pid, launcher):  # boot and the dragon launcher die: no one cleans up
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)

    teardown = parsl_dragon("teardown", server_dir, "--force")
    assert teardown.returncode == 0, teardown.stdout + teardown.stderr
    assert "asked the server" not in teardown.stdout
    assert "processes carrying the block token" in teardown.stdout
    assert f"shm pools of runtime launcher {launcher}" in teardown.stdout
    assert_block_gone(server_dir, info, launcher)
