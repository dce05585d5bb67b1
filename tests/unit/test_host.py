"""Unit tests for parsl_dragon.host: the /proc, pidfd and /dev/shm proofs boot and the CLI share
(no Dragon runtime is started; pools live in a temporary directory, never the real /dev/shm)."""
from __future__ import annotations

import logging
import os
import platform
import signal
import subprocess
import sys
import time
import uuid

import pytest

from parsl_dragon.host import processes, shm
from parsl_dragon.vocabulary import ENV_BLOCK_TOKEN


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------- shm pool names

def test_pool_prefix_format():
    uid3 = str(os.getuid())[-3:]
    assert shm.pool_prefix(123456) == f"/dev/shm/DD{uid3}456"
    assert shm.pool_prefix(42) == f"/dev/shm/DD{uid3}42"
    assert shm.pool_prefix(1000) == f"/dev/shm/DD{uid3}000"


def test_pool_prefix_matches_dragon_naming():
    facts = pytest.importorskip("dragon.infrastructure.facts")
    # dragon names pools after the creating process; the shm file is "D" + the pool name
    name = facts.runtime_pool_name("inf")
    assert ("/dev/shm/D" + name).startswith(shm.pool_prefix(os.getpid()))


# ---------------------------------------------------------------- leftover processes


def test_processes_with_token_finds_only_carriers(spawn):
    token = uuid.uuid4().hex
    carrier = spawn(token)
    second_carrier = spawn(token)
    other_token = spawn(uuid.uuid4().hex)
    longer_token = spawn(token + "0")  # not an exact match
    in_other_var = spawn(extra_env={"UNRELATED": f"{ENV_BLOCK_TOKEN}={token}"})  # needle inside another value
    no_token = spawn()
    found = processes.processes_with_token(token)
    assert sorted(found) == sorted([carrier.pid, second_carrier.pid])
    for child in (other_token, longer_token, in_other_var, no_token):
        assert child.pid not in found
    assert os.getpid() not in found


def test_processes_with_unknown_token_is_empty(spawn):
    spawn(uuid.uuid4().hex)
    assert processes.processes_with_token(uuid.uuid4().hex) == []


def test_kill_leftovers_kills_carriers_only(spawn, caplog):
    token = uuid.uuid4().hex
    carrier = spawn(token)
    bystander = spawn(uuid.uuid4().hex)
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.host.processes"):
        killed = processes.kill_leftovers(token)
    assert killed == [carrier.pid]
    assert carrier.wait(timeout=10) == -signal.SIGKILL  # reaped here
    assert bystander.poll() is None  # still running
    assert any(str(carrier.pid) in r.getMessage() and "leftover" in r.getMessage() for r in caplog.records)
    # once reaped the carrier is gone: nothing left to kill
    assert processes.processes_with_token(token) == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.host.processes"):
        assert processes.kill_leftovers(token) == []
    assert not caplog.records


def test_proc_facts_of_a_running_process_and_of_a_gone_one(spawn):
    child = spawn()
    assert processes.is_running(child.pid) and processes.parent_pid(child.pid) == os.getpid()
    assert processes.command_line(child.pid)[:2] == [b"sleep", b"300"]
    assert processes.process_stat(child.pid)[1] >= processes.process_stat(os.getpid())[1]
    assert child.pid in processes.all_pids() and os.getpid() in processes.all_pids()
    child.kill()
    deadline = time.monotonic() + 10
    while processes.is_running(child.pid):  # a zombie until reaped: not running
        assert time.monotonic() < deadline, "a killed, unreaped process was taken for running"
        time.sleep(0.05)
    assert processes.process_stat(child.pid) is not None, "the zombie still has its /proc entry"
    child.wait()
    gone = _dead_pid()
    assert (processes.is_running(gone), processes.parent_pid(gone), processes.process_stat(gone)) == (False, None, None)
    assert processes.command_line(gone) == [b""]


def test_no_token_proves_nothing(spawn):
    child = spawn(token="")
    assert not processes.carries_token(child.pid, "") and not processes.carries_token(child.pid, None)
    assert processes.processes_with_token("") == []


def test_process_handle_refuses_unproven_pid(spawn):
    bystander = spawn()
    assert processes.ProcessHandle.open(bystander.pid, lambda pid: False) is None
    assert processes.ProcessHandle.open(_dead_pid(), lambda pid: True) is None
    handle = processes.ProcessHandle.open(bystander.pid, lambda pid: True)
    bystander.kill()
    bystander.wait()
    assert handle.send(signal.SIGTERM) is False  # the pidfd still names the reaped process, not a new one
    handle.close()


def test_process_handle_without_pidfds_proves_again_before_each_signal(spawn, monkeypatch):
    monkeypatch.setattr(processes, "open_pidfd", lambda pid: None)  # an old kernel
    proven = {"yes": True}
    child = spawn()
    handle = processes.ProcessHandle.open(child.pid, lambda pid: proven["yes"])
    assert handle is not None and handle.fd is None
    proven["yes"] = False  # e.g. the pid now belongs to a process without the token
    assert handle.send(signal.SIGTERM) is False and child.poll() is None
    proven["yes"] = True
    assert handle.send(signal.SIGTERM) is True and child.wait(timeout=10) == -signal.SIGTERM
    handle.close()


# ---------------------------------------------------------------- following the driver

def _ticks(pid):
    return processes.process_stat(pid)[1]


@pytest.fixture(params=["pidfd", "proc"])
def watch(request, monkeypatch):
    """DriverWatch with a pidfd, and without one (polling /proc), as boot started after the driver."""
    if request.param == "proc":
        monkeypatch.setattr(processes, "open_pidfd", lambda pid: None)
    watches = []

    def make(pid):
        watches.append(processes.DriverWatch(pid, boot_started=_ticks(pid) + 1))
        return watches[-1]

    yield make
    for made in watches:
        made.close()


def test_driver_watch_sees_the_driver_run_then_exit(spawn, watch):
    driver = spawn()
    watcher = watch(driver.pid)
    assert watcher.gone() is None
    driver.kill()
    driver.wait()
    assert str(driver.pid) in watcher.gone()


def test_driver_watch_sees_a_killed_driver_nobody_reaped(spawn, watch):
    driver = spawn()
    watcher = watch(driver.pid)
    driver.kill()  # a zombie until reaped
    deadline = time.monotonic() + 10
    while watcher.gone() is None:
        assert time.monotonic() < deadline, "a dead, unreaped driver was taken for alive"
        time.sleep(0.05)
    driver.wait()


def test_driver_gone_before_boot_started(spawn):
    driver = spawn()
    driver.kill()
    driver.wait()
    assert "does not exist" in processes.DriverWatch(driver.pid).gone()


def test_a_pid_that_started_after_boot_is_not_the_driver(spawn):
    reused = spawn()  # stands for a new process that got the dead driver's pid after boot started
    watcher = processes.DriverWatch(reused.pid, boot_started=_ticks(reused.pid) - 1)
    assert "reused" in watcher.gone()
    watcher.close()


def test_driver_pid_reused_while_boot_runs(spawn, monkeypatch):
    monkeypatch.setattr(processes, "open_pidfd", lambda pid: None)
    driver = spawn()
    watcher = processes.DriverWatch(driver.pid, boot_started=_ticks(driver.pid) + 1)
    real = processes.process_stat
    monkeypatch.setattr(processes, "process_stat", lambda pid: ("S", real(pid)[1] + 500))  # same pid, later start
    assert "another process" in watcher.gone()


# ---------------------------------------------------------------- exact shm pools

@pytest.fixture
def make_pools(tmp_path, monkeypatch):
    """Pools in ``tmp_path/shm`` under boot's naming (never the real /dev/shm); no live launchers."""
    directory = tmp_path / "shm"
    directory.mkdir()
    uid3 = str(os.getuid())[-3:]
    monkeypatch.setattr(shm, "pool_prefix", lambda pid: str(directory / f"DD{uid3}{str(pid)[-3:]}"))
    monkeypatch.setattr(shm, "_dragon_launchers", lambda: [])
    monkeypatch.delenv("USER", raising=False)

    def make(*names):
        for name in names:
            (directory / name).write_text("")
        return [str(directory / name) for name in names]

    make.dir = directory
    return make


def test_pools_of_a_pid_that_is_a_prefix_of_another_are_kept(make_pools):
    uid3 = str(os.getuid())[-3:]
    ours = make_pools(f"DD{uid3}42def0D", f"DD{uid3}42def0M", f"DD{uid3}42inf0D", f"DD{uid3}42log_0M")
    theirs = make_pools(f"DD{uid3}423def0D", f"DD{uid3}423inf0M", f"DD{uid3}4210def0D")
    assert shm.runtime_pool_files(42) == sorted(ours)
    assert sorted(shm.remove_pools(42)) == sorted(ours)
    assert all(os.path.exists(p) for p in theirs), "another runtime's pools were removed"


def test_only_dragons_runtime_pool_names_are_matched(make_pools):
    uid3 = str(os.getuid())[-3:]
    make_pools(f"DD{uid3}042def0D.bak", f"DD{uid3}042xyz0D", f"DD{uid3}042def", f"DD{uid3}042defD", "sem.DD0042def0D")
    assert shm.runtime_pool_files(1042) == []


def test_the_logging_pool_is_named_after_user(make_pools, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    [pool] = make_pools("DDice777log_0D")
    assert shm.runtime_pool_files(5777) == [pool]


def test_pool_names_match_dragons_own(make_pools):
    facts = pytest.importorskip("dragon.infrastructure.facts")
    names = [facts.runtime_pool_name(suffix) + "0" + kind
             for suffix in (facts.INFRASTRUCTURE_POOL_SUFFIX, facts.DEFAULT_POOL_SUFFIX) for kind in "MD"]
    pools = make_pools(*["D" + name for name in names])
    assert shm.runtime_pool_files(os.getpid()) == sorted(pools)


def test_known_pools_are_removed_and_pools_in_use_kept(make_pools, tmp_path):
    [learned] = make_pools("DD4611686018427387904")  # a pool with a name only its users knew
    [mapped] = make_pools(f"DD{str(os.getuid())[-3:]}{str(os.getpid())[-3:]}def0D")
    holder = subprocess.Popen([sys.executable, "-c", "import mmap, sys, time; f = open(sys.argv[1], 'r+b'); "
                               "f.write(b'x'); f.flush(); m = mmap.mmap(f.fileno(), 1); f.close(); "
                               "print('ready', flush=True); time.sleep(60)", mapped],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert shm.remove_pools(os.getpid(), known=[learned]) == [learned]
        assert os.path.exists(mapped), "a pool another live process maps was removed"
        assert shm.remove_pools(os.getpid(), exclude=[holder.pid]) == [mapped], "the runtime's own dying process"
    finally:
        holder.kill()
        holder.wait()


def test_named_pools_older_than_the_runtime_are_kept(make_pools):
    [old] = make_pools(f"DD{str(os.getuid())[-3:]}777def0D")
    assert shm.remove_pools(1777, created_after=time.time() + 60) == []
    assert os.path.exists(old)


def test_shm_files_of_a_process_are_those_it_maps_or_holds_open(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "SHM_DIR", str(tmp_path))  # never the real /dev/shm others' leak checks watch
    path, held = str(tmp_path / "DDmapped"), str(tmp_path / "DDopen")
    code = ("import mmap, sys, time; f = open(sys.argv[1], 'w+b'); f.write(b'x'); f.flush(); "
            "m = mmap.mmap(f.fileno(), 1); f.close(); g = open(sys.argv[2], 'w'); print('ready', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, path, held], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert shm.shm_files_of(holder.pid) == {path, held}
        assert shm.files_in_use([path, held, str(tmp_path / "nobody-uses-this")]) == {path, held}
        assert shm.files_in_use([path, held], exclude=[holder.pid]) == set()
    finally:
        holder.kill()
        holder.wait()
    assert shm.shm_files_of(holder.pid) == set()


def test_pools_of_a_process_are_only_dragons(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "SHM_DIR", str(tmp_path))  # never the real /dev/shm others' leak checks watch
    pool, other = str(tmp_path / "DD0123def0D"), str(tmp_path / "task-scratch")
    code = "import sys, time; f = open(sys.argv[1], 'w'); g = open(sys.argv[2], 'w'); print('ready', flush=True); " \
           "time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code, pool, other], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert shm.shm_files_of(holder.pid) == {pool, other}
        assert shm.pools_of(holder.pid) == {pool}
    finally:
        holder.kill()
        holder.wait()


def test_a_dragon_launcher_is_told_by_its_command(spawn, tmp_path):
    dragon = tmp_path / "dragon"
    dragon.write_text("#!/bin/sh\nsleep 30\n")
    os.chmod(dragon, 0o755)
    launcher, other = spawn(argv=[str(dragon)]), spawn()
    deadline = time.monotonic() + 10
    while not shm.is_dragon_launcher(launcher.pid):  # argv[1] of `sh /path/dragon` once exec'd
        assert time.monotonic() < deadline, "a dragon launcher was not recognised"
        time.sleep(0.05)
    assert not shm.is_dragon_launcher(other.pid)
    assert launcher.pid in shm._dragon_launchers() and other.pid not in shm._dragon_launchers()


def test_cpu_seconds_counts_a_busy_process_and_none_for_a_gone_one():
    spin = "import time\nend = time.time() + 10\nwhile time.time() < end: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10)"])
    try:
        time.sleep(1.0)
        spun, slept = processes.cpu_seconds(busy.pid), processes.cpu_seconds(idle.pid)
        assert spun is not None and slept is not None and spun > 0.2 and spun > slept
    finally:
        for child in (busy, idle):
            child.kill()
            child.wait(5)
    assert processes.cpu_seconds(busy.pid) is None


FAULTS_OF_READS = """
import resource, sys
from parsl_dragon.host import memory
print(memory.keep_freed_heap({}) if sys.argv[1] == "keep" else None)
source = b"x" * (1 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):  # a read as a worker makes it: the bytes received, their writable copy; both freed
    received = bytes(memoryview(source)[1:])
    copy = bytearray(received)
    del received, copy
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_a_worker_that_keeps_freed_heap_reads_without_faulting_fresh_pages_in():
    from parsl_dragon.host import memory
    assert memory.keep_freed_heap({"MALLOC_TRIM_THRESHOLD_": "1"}) is False, "the user's own setting wins"
    env = {name: value for name, value in os.environ.items()  # glibc's own defaults in both runs
           if not name.startswith("MALLOC_") and name not in ("GLIBC_TUNABLES", "PYTHONMALLOC")}
    runs = {}
    for mode in ("default", "keep"):
        runs[mode] = subprocess.run([sys.executable, "-c", FAULTS_OF_READS, mode], capture_output=True, text=True,
                                    check=True, env={**env, "PYTHONPATH": os.getcwd()}).stdout.split()
    assert runs["keep"][0] == "True"
    default, keep = int(runs["default"][1]), int(runs["keep"][1])
    assert keep < 4 * 256, f"only the first read faults its 2 MiB in: {runs}"
    assert default > 4 * keep, f"glibc's default gives freed memory back and faults it in again: {runs}"
