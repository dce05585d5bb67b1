"""Start-up, shutdown and failure paths of DragonExecutor on the real runtime."""
import glob
import os
import time

import parsl
import pytest
from parsl import python_app
from parsl.executors.errors import BadStateException
from parsl.jobs.states import JobState
from parsl.launchers import SimpleLauncher, SrunLauncher
from parsl.providers import LocalProvider

from parsl_dragon import ConfigurationError, DragonExecutor


@python_app
def add(a, b):
    return a + b


def test_shutdown_leaves_nothing(load_dfk, tmp_path):
    dfk = load_dfk()
    assert add(1, 2).result(timeout=120) == 3
    executor = dfk.executors["dragon"]
    block_dir = glob.glob(str(tmp_path / "runinfo" / "*" / "dragon" / "block-0"))[0]
    conn_file = os.path.join(block_dir, "connection.json")
    assert oct(os.stat(conn_file).st_mode & 0o777) == "0o600"
    dfk.cleanup()
    parsl.clear()
    assert not os.path.exists(conn_file), "the server removes its connection file when it stops"
    executor.shutdown()  # idempotent
    # no_leaks checks processes, /dev/shm pools and /tmp/dragon-* afterwards


def test_shutdown_before_start_is_safe():
    executor = DragonExecutor()
    executor.shutdown()
    executor.shutdown()


def test_startup_timeout_fails_tasks_with_log_location(load_dfk):
    started = time.monotonic()
    load_dfk(startup_timeout_ms=300)
    future = add(1, 1)
    with pytest.raises(BadStateException) as info:
        future.result(timeout=60)
    message = str(info.value)
    assert "start-up timeout" in message and "startup_timeout_ms" in message
    assert load_dfk.last.executors["dragon"].status()["0"].state == JobState.MISSING, "never connected: MISSING"
    assert "server.log" in message and "dragon.log" in message
    assert time.monotonic() - started < 30


def test_block_that_dies_is_reported_with_its_logs(load_dfk):
    provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1, launcher=SimpleLauncher(),
                             worker_init="echo 'site setup failed' >&2; exit 3")
    load_dfk(provider=provider)
    with pytest.raises(BadStateException) as info:
        add(1, 1).result(timeout=60)
    assert "job ended" in str(info.value)
    assert isinstance(info.value.__cause__ or info.value, Exception)


def test_per_node_launcher_is_refused(tmp_path):
    executor = DragonExecutor(provider=LocalProvider(launcher=SrunLauncher()))
    executor.run_dir = str(tmp_path)
    with pytest.raises(ConfigurationError, match="SrunLauncher"):
        executor.start()


def test_transport_from_environment_reaches_the_runtime(load_dfk, monkeypatch, tmp_path):
    monkeypatch.setenv("PARSL_DRAGON_TRANSPORT", "tcp")
    load_dfk()
    assert add(2, 3).result(timeout=120) == 5
    boot_log = glob.glob(str(tmp_path / "runinfo" / "*" / "dragon" / "block-0" / "boot.log"))[0]
    assert " -t tcp " in open(boot_log).read()


def test_explicit_argument_beats_environment(monkeypatch):
    monkeypatch.setenv("PARSL_DRAGON_TIMEOUT", "1234")
    monkeypatch.setenv("PARSL_DRAGON_STARTUP_TIMEOUT", "-1")
    executor = DragonExecutor(timeout_ms=999)
    from parsl_dragon.driver.settings import resolve_settings
    settings = resolve_settings(timeout_ms=executor.timeout_ms, startup_timeout_ms=executor.startup_timeout_ms)
    assert settings.timeout_ms == 999 and settings.startup_timeout_s is None
