"""Killed drivers and servers leave nothing behind: no process of the block, no shm pool of its runtime.

A block on the driver's own host follows its driver (boot's ``--driver-pid``); a runtime whose
server was SIGKILLed is cleaned up by its boot process. Each test kills at one moment and then
requires, within lease + 10 s, that no process carries the block's token, that the boot process
is gone, and that no /dev/shm pool of that runtime remains.
"""
import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from parsl.executors.errors import BadStateException

from parsl_dragon import ServerLost
from parsl_dragon.host.processes import process_stat, processes_with_token
from parsl_dragon.host.shm import runtime_pool_files, shm_files_of
from parsl_dragon.vocabulary import ENV_BLOCK_TOKEN
from parsl_dragon.wire.connection import read_connection
from tests import leaks
from tests.integration.test_faults import _wait_for_file, write_pid_then_sleep

PERIOD, THRESHOLD = 1.0, 3
DEADLINE = PERIOD * THRESHOLD + 10.0  # lease + 10 s
START = 120.0  # a runtime starting on a loaded 2-core machine

DRIVER = """
import sys, time, parsl
from parsl import python_app
from parsl_dragon import DragonExecutor

@python_app
def sleepy():
    import time
    time.sleep(600)

parsl.load(parsl.Config(executors=[DragonExecutor(workers_per_node=1, heartbeat_period={period},
                                                  heartbeat_threshold={threshold})],
                        run_dir=sys.argv[1], strategy_period=0.2))
print("LOADED", flush=True)
future = sleepy()
time.sleep(600)
""".format(period=PERIOD, threshold=THRESHOLD)

_STARTED = re.compile(r" boot (\d+) INFO Started dragon \(pid (\d+)\)")


class BlockRuntime:
    """A block's runtime seen from outside while it runs: its boot process, its ``dragon``
    launcher, the block token (read from the launcher's environment) and its shm pools."""

    def __init__(self, block_dir: str) -> None:
        self.block_dir = block_dir
        self.boot_pid, self.launcher_pid = self._started()
        self.token = self._token()
        self.pools = set()

    def _started(self):
        log = os.path.join(self.block_dir, "boot.log")
        deadline = time.monotonic() + START
        while True:
            found = _STARTED.search(open(log).read()) if os.path.exists(log) else None
            if found:
                return int(found.group(1)), int(found.group(2))
            assert time.monotonic() < deadline, f"boot never started dragon: {log}"
            time.sleep(0.02)

    def _token(self) -> str:
        with open(f"/proc/{self.launcher_pid}/environ", "rb") as handle:
            for entry in handle.read().split(b"\0"):
                if entry.startswith(f"{ENV_BLOCK_TOKEN}=".encode()):
                    return entry.split(b"=", 1)[1].decode()
        raise AssertionError(f"launcher {self.launcher_pid} carries no block token")

    def learn_pools(self) -> set:
        """The Dragon shm files the block's processes use now (remembered for the final check)."""
        for pid in processes_with_token(self.token):
            self.pools |= {p for p in shm_files_of(pid) if leaks.SHM_POOL_RE.match(os.path.basename(p))}
        return self.pools

    def leftovers(self) -> dict:
        processes = processes_with_token(self.token) + ([self.boot_pid] if _alive(self.boot_pid) else [])
        pools = sorted(p for p in self.pools | set(runtime_pool_files(self.launcher_pid)) if os.path.exists(p))
        return {kind: items for kind, items in (("processes", processes), ("shm", pools)) if items}

    def wait_gone(self, since: float) -> dict:
        """Poll until nothing of the block is left or lease + 10 s after ``since`` passed."""
        while True:
            left = self.leftovers()
            if not left or time.monotonic() > since + DEADLINE:
                return left
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    state = process_stat(pid)
    return state is not None and state[0] not in ("Z", "X")


def _block_dir(run_dir) -> str:
    deadline = time.monotonic() + START
    while not glob.glob(os.path.join(str(run_dir), "*", "*", "block-0")):
        assert time.monotonic() < deadline, "the driver never launched a block"
        time.sleep(0.02)
    return glob.glob(os.path.join(str(run_dir), "*", "*", "block-0"))[0]


@pytest.fixture
def driver(tmp_path):
    """Start a driver process (a small Parsl script with one DragonExecutor block); SIGKILLed at the end."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    with open(tmp_path / "driver.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "runinfo")],
                                stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout.readline().strip() == "LOADED"
    yield proc
    proc.kill()
    proc.wait()


def _kill(proc) -> float:
    proc.kill()
    proc.wait()
    return time.monotonic()


def _assert_nothing_left(runtime: BlockRuntime, since: float, before: dict) -> None:
    left = runtime.wait_gone(since)
    print(f"{time.monotonic() - since:.1f}s after the kill: left {left or 'nothing'}")
    assert not left, (f"{DEADLINE:.0f}s after the kill, block token {runtime.token} (boot {runtime.boot_pid}, "
                      f"dragon {runtime.launcher_pid}) left {left}:\n{open(runtime.block_dir + '/boot.log').read()}")
    remaining = leaks.new_since(before).get("shm", [])
    assert not remaining, f"new Dragon shm files remain: {remaining}"


def test_driver_killed_as_its_block_job_starts_leaves_nothing(no_leaks, driver, tmp_path):
    deadline = time.monotonic() + START
    while not glob.glob(str(tmp_path / "runinfo" / "*" / "submit_scripts" / "*.sh.ec")):  # the job runs
        assert time.monotonic() < deadline, "the driver never launched a block"
        time.sleep(0.01)
    killed = _kill(driver)  # boot is starting (or about to): it must not start a runtime for nobody
    log = os.path.join(_block_dir(tmp_path / "runinfo"), "boot.log")
    while not _boot_ended(log):
        assert time.monotonic() < killed + DEADLINE, f"boot still runs {DEADLINE:.0f}s after the driver's end"
        time.sleep(0.1)
    left = leaks.wait_for_no_leaks(no_leaks, timeout=max(0.0, killed + DEADLINE - time.monotonic()))
    print(f"driver killed as its block job started: nothing left after {time.monotonic() - killed:.1f}s")
    assert not left, leaks.describe(left)
    text = open(log).read()
    assert "not starting the runtime" in text or "Driver gone: stopping the runtime" in text, text


def _boot_ended(log: str) -> bool:
    """boot.log names its boot process, and that process is gone."""
    found = re.search(r" boot (\d+) ", open(log).read()) if os.path.exists(log) else None
    return found is not None and not _alive(int(found.group(1)))


@pytest.mark.parametrize("moment", ["launched", "pools made"])
def test_driver_killed_while_its_block_starts_leaves_nothing(no_leaks, driver, tmp_path, moment):
    runtime = BlockRuntime(_block_dir(tmp_path / "runinfo"))
    connection = os.path.join(runtime.block_dir, "connection.json")
    deadline = time.monotonic() + START
    while moment == "pools made" and not runtime.learn_pools():
        assert time.monotonic() < deadline and not os.path.exists(connection), "no pools before the server came up"
        time.sleep(0.02)
    assert not os.path.exists(connection), "the server came up already: not a start-up kill"
    killed = _kill(driver)
    runtime.learn_pools()
    _assert_nothing_left(runtime, killed, no_leaks)
    assert "Driver gone: stopping the runtime" in open(runtime.block_dir + "/boot.log").read()


def test_driver_killed_right_after_its_server_came_up_leaves_nothing(no_leaks, driver, tmp_path):
    runtime = BlockRuntime(_block_dir(tmp_path / "runinfo"))
    connection = os.path.join(runtime.block_dir, "connection.json")
    deadline = time.monotonic() + START
    while not os.path.exists(connection):
        assert time.monotonic() < deadline, "the server never came up"
        time.sleep(0.02)
    runtime.learn_pools()
    killed = _kill(driver)
    _assert_nothing_left(runtime, killed, no_leaks)


@pytest.mark.parametrize("cancel", [False, True], ids=["cleanup", "cancel then cleanup"])
def test_server_killed_mid_task_then_cleanup_leaves_nothing(load_dfk, no_leaks, tmp_path, cancel):
    dfk = load_dfk(heartbeat_period=PERIOD, heartbeat_threshold=THRESHOLD)
    victim = write_pid_then_sleep(str(tmp_path / "worker.pid"), 120)
    _wait_for_file(str(tmp_path / "worker.pid"), timeout=START)
    executor = dfk.executors["dragon"]
    launch = executor._launches["0"]
    runtime = BlockRuntime(launch.block_dir)
    runtime.learn_pools()
    os.kill(read_connection(launch.connection_file).pid, signal.SIGKILL)
    killed = time.monotonic()
    if cancel:  # the provider signals the job's process group while the runtime is still ending
        executor.provider.cancel([launch.job_id])
    with pytest.raises((ServerLost, BadStateException)):  # lease lost, or the block's job seen ending first
        victim.result(timeout=DEADLINE)
    dfk.cleanup()
    _assert_nothing_left(runtime, killed, no_leaks)
