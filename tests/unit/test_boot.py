"""Unit tests for the pure helpers of parsl_dragon.server.boot (no Dragon runtime is started)."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest

from parsl_dragon.server import boot
from parsl_dragon.vocabulary import ENV_BLOCK_TOKEN, ENV_NODES_PER_BLOCK


def _write_executable(path, text="#!/bin/sh\nexit 0\n"):
    path.write_text(text)
    os.chmod(path, 0o755)
    return path


# ---------------------------------------------------------------- transport

@pytest.mark.parametrize("requested", ["tcp", "hsta"])
def test_explicit_transport_passes_through(requested, caplog):
    with caplog.at_level(logging.DEBUG, logger="parsl_dragon.server.boot"):
        assert boot.choose_transport(requested) == requested
    assert not caplog.records  # no probing, nothing to say


def test_auto_falls_back_to_tcp_in_this_environment(caplog):
    if shutil.which("dragon-hsta") is not None:
        pytest.skip("dragon-hsta is installed here")
    assert boot.hsta_available() is False
    with caplog.at_level(logging.INFO, logger="parsl_dragon.server.boot"):
        assert boot.choose_transport("auto") == "tcp"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "falling back to tcp" in warnings[0].getMessage()


def test_auto_is_tcp_without_hsta_agent_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # empty directory: no dragon-hsta
    assert boot.hsta_available() is False
    assert boot.choose_transport("auto") == "tcp"


def test_agent_alone_is_not_enough_without_libfabric(tmp_path, monkeypatch):
    import ctypes
    try:
        ctypes.CDLL("libfabric.so.1")
        pytest.skip("libfabric is installed here")
    except OSError:
        pass
    _write_executable(tmp_path / "dragon-hsta")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("dragon-hsta") == str(tmp_path / "dragon-hsta")
    assert boot.hsta_available() is False
    assert boot.choose_transport("auto") == "tcp"


# ---------------------------------------------------------------- allocation and launch mode

def _nodefile(tmp_path, lines):
    path = tmp_path / "nodefile"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_no_allocation():
    assert boot.allocation_nodes({}) == 0
    assert boot.launch_mode_args({}) == ["-s"]


def test_unrelated_environment_is_no_allocation():
    env = {"HOME": "/home/u", "SLURM_CONF": "/etc/slurm.conf", "PBS_NODEFILE": "/nonexistent"}
    assert boot.allocation_nodes(env) == 0
    assert boot.launch_mode_args(env) == ["-s"]


def test_empty_slurm_job_id_is_no_allocation():
    env = {"SLURM_JOB_ID": "", "SLURM_JOB_NUM_NODES": "4"}
    assert boot.allocation_nodes(env) == 0
    assert boot.launch_mode_args(env) == ["-s"]


def test_slurm_one_node():
    env = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NUM_NODES": "1"}
    assert boot.allocation_nodes(env) == 1
    assert boot.launch_mode_args(env) == ["-s"]


def test_slurm_two_nodes():
    env = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NUM_NODES": "2"}
    assert boot.allocation_nodes(env) == 2
    assert boot.launch_mode_args(env) == ["-w", "slurm"]


def test_slurm_nnodes_fallback_and_default():
    assert boot.allocation_nodes({"SLURM_JOB_ID": "1", "SLURM_NNODES": "3"}) == 3
    assert boot.launch_mode_args({"SLURM_JOB_ID": "1", "SLURM_NNODES": "3"}) == ["-w", "slurm"]
    assert boot.allocation_nodes({"SLURM_JOB_ID": "1"}) == 1
    assert boot.launch_mode_args({"SLURM_JOB_ID": "1"}) == ["-s"]
    # SLURM_JOB_NUM_NODES wins over SLURM_NNODES
    assert boot.allocation_nodes({"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "8"}) == 1


def test_pbs_one_host(tmp_path):
    # PBS lists one line per slot: the same host repeated is still one node
    env = {"PBS_JOBID": "77.pbs", "PBS_NODEFILE": _nodefile(tmp_path, ["nid001"] * 4)}
    assert boot.allocation_nodes(env) == 1
    assert boot.launch_mode_args(env) == ["-s"]


def test_pbs_two_hosts(tmp_path):
    env = {"PBS_JOBID": "77.pbs",
           "PBS_NODEFILE": _nodefile(tmp_path, ["nid001", "nid002", "nid001", " nid002 ", ""])}
    assert boot.allocation_nodes(env) == 2
    assert boot.launch_mode_args(env) == ["-w", "pbs+pals"]


def test_pbs_empty_nodefile_counts_as_one_node(tmp_path):
    env = {"PBS_JOBID": "77.pbs", "PBS_NODEFILE": _nodefile(tmp_path, [])}
    assert boot.allocation_nodes(env) == 1
    assert boot.launch_mode_args(env) == ["-s"]


def test_pbs_needs_job_id_and_existing_nodefile(tmp_path):
    nodefile = _nodefile(tmp_path, ["a", "b"])
    assert boot.allocation_nodes({"PBS_NODEFILE": nodefile}) == 0
    assert boot.allocation_nodes({"PBS_JOBID": "77", "PBS_NODEFILE": str(tmp_path / "missing")}) == 0
    assert boot.allocation_nodes({"PBS_JOBID": "77"}) == 0


def test_slurm_takes_precedence_over_pbs(tmp_path):
    env = {"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "2",
           "PBS_JOBID": "77", "PBS_NODEFILE": _nodefile(tmp_path, ["a", "b", "c"])}
    assert boot.allocation_nodes(env) == 2
    assert boot.launch_mode_args(env) == ["-w", "slurm"]


# ---------------------------------------------------------------- command and environment

def test_dragon_command_uses_launcher_from_env_path(tmp_path):
    dragon = _write_executable(tmp_path / "dragon")
    env = {"PATH": str(tmp_path), "SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "2"}
    command = boot.dragon_command("tcp", env, ["--block-id", "3"])
    assert command == [str(dragon), "-w", "slurm", "-t", "tcp",
                       sys.executable, "-m", "parsl_dragon.server.main", "--block-id", "3"]


def test_dragon_command_single_node(tmp_path):
    _write_executable(tmp_path / "dragon")
    command = boot.dragon_command("hsta", {"PATH": str(tmp_path)}, [])
    assert command[1:4] == ["-s", "-t", "hsta"]


def test_dragon_command_without_launcher(tmp_path):
    with pytest.raises(FileNotFoundError, match="dragon"):
        boot.dragon_command("tcp", {"PATH": str(tmp_path)}, [])


def test_block_environment_carries_token_and_venv_bin(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    env = boot.block_environment("tok123")
    assert env[ENV_BLOCK_TOKEN] == "tok123"
    assert env["PATH"] == os.path.dirname(sys.executable) + os.pathsep + "/usr/bin"
    assert env["SOMETHING_ELSE"] == "kept"
    assert ENV_BLOCK_TOKEN not in os.environ  # the caller's environment is untouched


def test_parser():
    args = boot.build_parser().parse_args(["--block-dir", "/b", "--transport", "tcp", "--", "--x", "1"])
    assert args.block_dir == "/b"
    assert args.transport == "tcp"
    assert [a for a in args.server_args if a != "--"] == ["--x", "1"]
    assert boot.build_parser().parse_args(["--block-dir", "/b"]).transport == "auto"
    with pytest.raises(SystemExit):
        boot.build_parser().parse_args(["--block-dir", "/b", "--transport", "udp"])


# ---------------------------------------------------------------- shm pool names

def test_pool_prefix_format():
    uid3 = str(os.getuid())[-3:]
    assert boot.pool_prefix(123456) == f"/dev/shm/DD{uid3}456"
    assert boot.pool_prefix(42) == f"/dev/shm/DD{uid3}42"
    assert boot.pool_prefix(1000) == f"/dev/shm/DD{uid3}000"


def test_pool_prefix_matches_dragon_naming():
    facts = pytest.importorskip("dragon.infrastructure.facts")
    # dragon names pools after the creating process; the shm file is "D" + the pool name
    name = facts.runtime_pool_name("inf")
    assert ("/dev/shm/D" + name).startswith(boot.pool_prefix(os.getpid()))


# ---------------------------------------------------------------- leftover processes

@pytest.fixture
def spawn():
    children = []

    def start(token=None, extra_env=None):
        env = dict(os.environ)
        env.pop(ENV_BLOCK_TOKEN, None)
        if token is not None:
            env[ENV_BLOCK_TOKEN] = token
        env.update(extra_env or {})
        child = subprocess.Popen(["sleep", "30"], env=env)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


def test_processes_with_token_finds_only_carriers(spawn):
    token = uuid.uuid4().hex
    carrier = spawn(token)
    second_carrier = spawn(token)
    other_token = spawn(uuid.uuid4().hex)
    longer_token = spawn(token + "0")  # not an exact match
    in_other_var = spawn(extra_env={"UNRELATED": f"{ENV_BLOCK_TOKEN}={token}"})  # needle inside another value
    no_token = spawn()
    found = boot.processes_with_token(token)
    assert sorted(found) == sorted([carrier.pid, second_carrier.pid])
    for child in (other_token, longer_token, in_other_var, no_token):
        assert child.pid not in found
    assert os.getpid() not in found


def test_processes_with_unknown_token_is_empty(spawn):
    spawn(uuid.uuid4().hex)
    assert boot.processes_with_token(uuid.uuid4().hex) == []


def test_kill_leftovers_kills_carriers_only(spawn, caplog):
    token = uuid.uuid4().hex
    carrier = spawn(token)
    bystander = spawn(uuid.uuid4().hex)
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.server.boot"):
        killed = boot.kill_leftovers(token)
    assert killed == [carrier.pid]
    assert carrier.wait(timeout=10) == -signal.SIGKILL  # reaped here
    assert bystander.poll() is None  # still running
    assert any(str(carrier.pid) in r.getMessage() and "leftover" in r.getMessage() for r in caplog.records)
    # once reaped the carrier is gone: nothing left to kill
    assert boot.processes_with_token(token) == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.server.boot"):
        assert boot.kill_leftovers(token) == []
    assert not caplog.records


def test_cleanup_shim_shadows_the_user_wide_dragon_cleanup(tmp_path, monkeypatch):
    import shutil
    import subprocess
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = boot.block_environment("tok", boot.cleanup_shim(str(tmp_path)))
    found = shutil.which("dragon-cleanup", path=env["PATH"])
    assert found == str(tmp_path / "bin" / "dragon-cleanup")
    done = subprocess.run([found, "--only-be"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "skipped user-wide dragon-cleanup --only-be" in done.stderr


# ---------------------------------------------------------------- start-up retry

@pytest.fixture
def run_boot(tmp_path):
    """Run Boot over a stand-in runtime (a shell script); Boot's signal handlers are undone after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    def run(script, script_is_program=False, env=None, **kwargs):
        runtime = _write_executable(tmp_path / "runtime", script if script_is_program else "#!/bin/sh\n" + script)
        token = uuid.uuid4().hex
        env = dict(os.environ, ATTEMPTS=str(tmp_path / "attempts"), CONN=str(tmp_path / "connection.json"),
                   STOPPED=str(tmp_path / "stopped"), **{ENV_BLOCK_TOKEN: token}, **(env or {}))
        runner = boot.Boot([str(runtime)], env, str(tmp_path / "dragon.log"), token,
                           connection_file=str(tmp_path / "connection.json"), pause=0.1, **kwargs)
        return runner.run(), (tmp_path / "attempts").read_text().count("x") if (tmp_path / "attempts").exists() else 0

    yield run
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_runtime_that_fails_before_the_server_is_started_once_more(run_boot, caplog):
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.server.boot"):
        code, attempts = run_boot('echo -n x >> "$ATTEMPTS"; [ "$(cat "$ATTEMPTS")" = xx ] && exit 0; exit 1\n')
    assert (code, attempts) == (0, 2), "the second start worked"
    assert "before the server came up (attempt 1 of 2)" in caplog.text


def test_a_runtime_that_keeps_failing_is_given_up_after_the_attempts(run_boot):
    assert run_boot('echo -n x >> "$ATTEMPTS"; exit 7\n') == (7, 2)
    assert run_boot('echo -n x >> "$ATTEMPTS"; exit 7\n', attempts=1)[0] == 7


def test_no_second_start_once_the_server_had_come_up(run_boot):
    script = 'echo -n x >> "$ATTEMPTS"; echo {} > "$CONN"; sleep 1; rm "$CONN"; exit 1\n'
    assert run_boot(script) == (1, 1), "a runtime that failed after the server was up is not restarted"


def test_server_flag_finds_the_value():
    args = ["--connection-file", "/b/connection.json", "--debug"]
    assert boot.server_flag(args, "--connection-file") == "/b/connection.json"
    assert boot.server_flag(args, "--log-file") is None and boot.server_flag(["--debug"], "--debug") is None


# ---------------------------------------------------------------- block dir and shim (no symlinks followed)

def test_private_directory_is_made_0700_and_a_looser_one_of_ours_is_tightened(tmp_path):
    made = tmp_path / "block-0"
    boot.private_directory(str(made))
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    boot.private_directory(str(loose))
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_private_directory_refuses_one_others_can_write(tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    with pytest.raises(boot.UnsafeBlockDir, match="group or others"):
        boot.private_directory(str(shared))
    assert stat.S_IMODE(shared.stat().st_mode) == mode, "left as it was"


def test_private_directory_refuses_a_symlink_and_a_file(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(boot.UnsafeBlockDir, match="not a directory"):
        boot.private_directory(str(tmp_path / "link"))
    (tmp_path / "file").write_text("")
    with pytest.raises(boot.UnsafeBlockDir, match="not a directory"):
        boot.private_directory(str(tmp_path / "file"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_private_directory_refuses_another_users(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(boot.UnsafeBlockDir, match="belongs to uid 65534"):
        boot.private_directory(str(theirs))


def test_cleanup_shim_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    block = tmp_path / "block"
    (block / "bin").mkdir(parents=True, mode=0o700)
    (block / "bin" / "dragon-cleanup").symlink_to(victim)
    bindir = boot.cleanup_shim(str(block))
    shim = block / "bin" / "dragon-cleanup"
    assert victim.read_text() == "precious\n", "the shim was written through the symlink"
    assert not shim.is_symlink() and shim.read_text() == boot.CLEANUP_SHIM
    assert stat.S_IMODE(shim.stat().st_mode) == 0o755
    assert stat.S_IMODE(os.stat(bindir).st_mode) == 0o700
    assert sorted(os.listdir(bindir)) == ["dragon-cleanup"], "no temporary file left"


def test_cleanup_shim_refuses_a_bin_dir_that_is_a_symlink(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    block = tmp_path / "block"
    block.mkdir(mode=0o700)
    (block / "bin").symlink_to(elsewhere)
    with pytest.raises(boot.UnsafeBlockDir):
        boot.cleanup_shim(str(block))
    assert os.listdir(elsewhere) == []


def test_main_refuses_a_block_dir_others_can_write_before_writing_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(boot, "dragon_command", _no_dragon)  # never start a runtime here
    block = tmp_path / "block"
    block.mkdir()
    os.chmod(block, 0o777)
    assert boot.main(["--block-dir", str(block), "--transport", "tcp", "--", "--x", "1"]) == 2
    assert "group or others" in capsys.readouterr().err
    assert os.listdir(block) == [], "no boot.log, no lock, no bin/ in a directory that is not ours alone"


def _no_dragon(*_args):
    raise FileNotFoundError("no dragon in this unit test")


# ---------------------------------------------------------------- following the driver

def _ticks(pid):
    return boot.process_stat(pid)[1]


@pytest.fixture(params=["pidfd", "proc"])
def watch(request, monkeypatch):
    """DriverWatch with a pidfd, and without one (polling /proc), as boot started after the driver."""
    if request.param == "proc":
        monkeypatch.setattr(boot, "_pidfd", lambda pid: None)
    watches = []

    def make(pid):
        watches.append(boot.DriverWatch(pid, boot_started=_ticks(pid) + 1))
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
    assert "does not exist" in boot.DriverWatch(driver.pid).gone()


def test_a_pid_that_started_after_boot_is_not_the_driver(spawn):
    reused = spawn()  # stands for a new process that got the dead driver's pid after boot started
    watcher = boot.DriverWatch(reused.pid, boot_started=_ticks(reused.pid) - 1)
    assert "reused" in watcher.gone()
    watcher.close()


def test_driver_pid_reused_while_boot_runs(spawn, monkeypatch):
    monkeypatch.setattr(boot, "_pidfd", lambda pid: None)
    driver = spawn()
    watcher = boot.DriverWatch(driver.pid, boot_started=_ticks(driver.pid) + 1)
    real = boot.process_stat
    monkeypatch.setattr(boot, "process_stat", lambda pid: ("S", real(pid)[1] + 500))  # same pid, later start
    assert "another process" in watcher.gone()


def test_parser_takes_the_driver_pid():
    args = boot.build_parser().parse_args(["--block-dir", "/b", "--driver-pid", "123", "--", "--x", "1"])
    assert args.driver_pid == 123 and [a for a in args.server_args if a != "--"] == ["--x", "1"]
    assert boot.build_parser().parse_args(["--block-dir", "/b"]).driver_pid is None


STOPPABLE = ('echo -n x >> "$ATTEMPTS"; trap \'echo stopped > "$STOPPED"; exit 0\' INT; '
             'while :; do sleep 0.1; done\n')


def test_boot_stops_the_runtime_when_the_driver_is_gone(run_boot, spawn, tmp_path, caplog):
    driver = spawn()
    threading.Timer(1.0, driver.kill).start()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="parsl_dragon.server.boot"):
        code, attempts = run_boot(STOPPABLE, driver=boot.DriverWatch(driver.pid, _ticks(driver.pid) + 1))
    assert (code, attempts) == (0, 1)
    assert (tmp_path / "stopped").read_text() == "stopped\n", "the runtime was asked to stop (SIGINT)"
    assert time.monotonic() - started < 5
    assert f"driver process {driver.pid}" in caplog.text and "stopping the runtime" in caplog.text
    driver.wait()


def test_a_stop_signal_stops_the_runtime_the_same_way(run_boot, tmp_path, caplog):
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()  # Boot's handler is ours meanwhile
    with caplog.at_level(logging.INFO, logger="parsl_dragon.server.boot"):
        assert run_boot(STOPPABLE) == (0, 1)
    assert (tmp_path / "stopped").read_text() == "stopped\n"
    assert "Received SIGTERM: stopping the runtime" in caplog.text


def test_boot_does_not_start_a_runtime_for_a_driver_already_gone(run_boot, spawn, tmp_path, caplog):
    driver = spawn()
    driver.kill()
    driver.wait()
    with caplog.at_level(logging.INFO, logger="parsl_dragon.server.boot"):
        assert run_boot(STOPPABLE, driver=boot.DriverWatch(driver.pid)) == (0, 0)
    assert "does not exist" in caplog.text and "not starting the runtime" in caplog.text


def test_boot_kills_a_runtime_that_ignores_the_stop(run_boot, spawn, monkeypatch):
    monkeypatch.setattr(boot, "STARTUP_STOP_GRACE_SECONDS", 0.5)
    driver = spawn()
    watcher = boot.DriverWatch(driver.pid, _ticks(driver.pid) + 1)
    threading.Timer(0.5, driver.kill).start()
    deaf = 'echo -n x >> "$ATTEMPTS"; trap "" INT; while :; do sleep 0.1; done\n'
    assert run_boot(deaf, driver=watcher) == (-signal.SIGKILL, 1)
    driver.wait()


RUNTIME_WITH_A_SERVER = """echo -n x >> "$ATTEMPTS"
trap 'echo launcher-interrupted >> "$STOPPED"' INT
sh -c 'trap "echo server-stopped >> \\"$STOPPED\\"; exit 0" TERM; while :; do sleep 0.1; done' &
server=$!
echo "{\\"pid\\": ${SERVER_PID:-$server}}" > "$CONN"
while kill -0 $server 2>/dev/null; do sleep 0.1; done
exit 0
"""


def test_boot_asks_a_running_server_to_stop(run_boot, spawn, tmp_path):
    driver = spawn()
    threading.Timer(0.6, driver.kill).start()
    started = time.monotonic()
    assert run_boot(RUNTIME_WITH_A_SERVER, driver=boot.DriverWatch(driver.pid, _ticks(driver.pid) + 1)) == (0, 1)
    assert (tmp_path / "stopped").read_text() == "server-stopped\n", "SIGTERM to the server, no SIGINT to dragon"
    assert time.monotonic() - started < boot.STOP_GRACE_SECONDS
    driver.wait()


def test_a_pid_in_the_connection_file_without_the_token_is_not_signalled(run_boot, spawn, tmp_path, monkeypatch):
    monkeypatch.setattr(boot, "STOP_GRACE_SECONDS", 0.5)
    bystander, driver = spawn(), spawn()
    threading.Timer(0.6, driver.kill).start()
    code, _ = run_boot(RUNTIME_WITH_A_SERVER, env={"SERVER_PID": str(bystander.pid)},
                       driver=boot.DriverWatch(driver.pid, _ticks(driver.pid) + 1))
    assert code == -signal.SIGKILL, "nothing asked would stop it: killed after the grace period"
    assert bystander.poll() is None, "a process without the block token was signalled"
    driver.wait()


# ---------------------------------------------------------------- exact shm pools

@pytest.fixture
def shm(tmp_path, monkeypatch):
    """Pools in ``tmp_path/shm`` under boot's naming (never the real /dev/shm); no live launchers."""
    directory = tmp_path / "shm"
    directory.mkdir()
    uid3 = str(os.getuid())[-3:]
    monkeypatch.setattr(boot, "pool_prefix", lambda pid: str(directory / f"DD{uid3}{str(pid)[-3:]}"))
    monkeypatch.setattr(boot, "_dragon_launchers", lambda: [])
    monkeypatch.delenv("USER", raising=False)

    def make(*names):
        for name in names:
            (directory / name).write_text("")
        return [str(directory / name) for name in names]

    make.dir = directory
    return make


def test_pools_of_a_pid_that_is_a_prefix_of_another_are_kept(shm):
    uid3 = str(os.getuid())[-3:]
    ours = shm(f"DD{uid3}42def0D", f"DD{uid3}42def0M", f"DD{uid3}42inf0D", f"DD{uid3}42log_0M")
    theirs = shm(f"DD{uid3}423def0D", f"DD{uid3}423inf0M", f"DD{uid3}4210def0D")
    assert boot.runtime_pool_files(42) == sorted(ours)
    assert sorted(boot.remove_pools(42)) == sorted(ours)
    assert all(os.path.exists(p) for p in theirs), "another runtime's pools were removed"


def test_only_dragons_runtime_pool_names_are_matched(shm):
    uid3 = str(os.getuid())[-3:]
    shm(f"DD{uid3}042def0D.bak", f"DD{uid3}042xyz0D", f"DD{uid3}042def", f"DD{uid3}042defD", "sem.DD0042def0D")
    assert boot.runtime_pool_files(1042) == []


def test_the_logging_pool_is_named_after_user(shm, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    [pool] = shm("DDice777log_0D")
    assert boot.runtime_pool_files(5777) == [pool]


def test_pool_names_match_dragons_own(shm):
    facts = pytest.importorskip("dragon.infrastructure.facts")
    names = [facts.runtime_pool_name(suffix) + "0" + kind
             for suffix in (facts.INFRASTRUCTURE_POOL_SUFFIX, facts.DEFAULT_POOL_SUFFIX) for kind in "MD"]
    pools = shm(*["D" + name for name in names])
    assert boot.runtime_pool_files(os.getpid()) == sorted(pools)


def test_known_pools_are_removed_and_pools_in_use_kept(shm, tmp_path):
    [learned] = shm("DD4611686018427387904")  # a pool with a name only its users knew
    [mapped] = shm(f"DD{str(os.getuid())[-3:]}{str(os.getpid())[-3:]}def0D")
    holder = subprocess.Popen([sys.executable, "-c", "import mmap, sys, time; f = open(sys.argv[1], 'r+b'); "
                               "f.write(b'x'); f.flush(); m = mmap.mmap(f.fileno(), 1); f.close(); "
                               "print('ready', flush=True); time.sleep(60)", mapped],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert boot.remove_pools(os.getpid(), known=[learned]) == [learned]
        assert os.path.exists(mapped), "a pool another live process maps was removed"
        assert boot.remove_pools(os.getpid(), exclude=[holder.pid]) == [mapped], "the runtime's own dying process"
    finally:
        holder.kill()
        holder.wait()


def test_named_pools_older_than_the_runtime_are_kept(shm):
    [old] = shm(f"DD{str(os.getuid())[-3:]}777def0D")
    assert boot.remove_pools(1777, created_after=time.time() + 60) == []
    assert os.path.exists(old)


def test_shm_files_of_a_process_are_those_it_maps_or_holds_open(tmp_path, monkeypatch):
    monkeypatch.setattr(boot, "SHM_DIR", str(tmp_path))  # never the real /dev/shm others' leak checks watch
    path, held = str(tmp_path / "DDmapped"), str(tmp_path / "DDopen")
    code = ("import mmap, sys, time; f = open(sys.argv[1], 'w+b'); f.write(b'x'); f.flush(); "
            "m = mmap.mmap(f.fileno(), 1); f.close(); g = open(sys.argv[2], 'w'); print('ready', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, path, held], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert boot.shm_files_of(holder.pid) == {path, held}
        assert boot.files_in_use([path, held, str(tmp_path / "nobody-uses-this")]) == {path, held}
        assert boot.files_in_use([path, held], exclude=[holder.pid]) == set()
    finally:
        holder.kill()
        holder.wait()
    assert boot.shm_files_of(holder.pid) == set()


RUNTIME_WITH_A_POOL = """#!{python}
import mmap, os, time
with open(os.environ["ATTEMPTS"], "a") as handle:
    handle.write("x")
f = open(os.environ["POOL"], "w+b"); f.write(b"x"); f.flush(); m = mmap.mmap(f.fileno(), 1)
open(os.environ["CONN"], "w").write("{{}}")
time.sleep(1.0)
os._exit(9)   # dies holding the pool, as a SIGKILLed runtime does
"""


def test_boot_removes_the_pools_its_runtime_used(run_boot, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(boot, "SHM_DIR", str(tmp_path))  # never the real /dev/shm others' leak checks watch
    pool = str(tmp_path / "DDparsldragontest")  # no name Dragon's scheme would derive from a pid
    with caplog.at_level(logging.INFO, logger="parsl_dragon.server.boot"):
        assert run_boot(RUNTIME_WITH_A_POOL.format(python=sys.executable), script_is_program=True,
                        env={"POOL": pool}) == (9, 1)
    assert not os.path.exists(pool), "the runtime's pool outlived it"
    assert f"Runtime uses shm ['{pool}']" in caplog.text
