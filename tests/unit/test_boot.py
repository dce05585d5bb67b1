"""Unit tests for a block's boot process: parsl_dragon.server.boot, .bootdir and .runtime (no Dragon
runtime is started: a shell script stands in for it)."""
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

from parsl_dragon.errors import InsecurePath
from parsl_dragon.host import processes, shm
from parsl_dragon.server import boot, bootdir, runtime
from parsl_dragon.vocabulary import ENV_BLOCK_TOKEN, RUNTIME_STOP_GRACE_SECONDS
from parsl_dragon.wire.security import private_directory


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


# ---------------------------------------------------------------- stand-in processes; the cleanup shim


def test_cleanup_shim_shadows_the_user_wide_dragon_cleanup(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = boot.block_environment("tok", bootdir.shim_dir(str(tmp_path)))
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
        program = _write_executable(tmp_path / "runtime", script if script_is_program else "#!/bin/sh\n" + script)
        token = uuid.uuid4().hex
        env = dict(os.environ, ATTEMPTS=str(tmp_path / "attempts"), CONN=str(tmp_path / "connection.json"),
                   STOPPED=str(tmp_path / "stopped"), **{ENV_BLOCK_TOKEN: token}, **(env or {}))
        runner = runtime.Boot([str(program)], env, str(tmp_path / "dragon.log"), token,
                              connection_file=str(tmp_path / "connection.json"), pause=0.1, **kwargs)
        return runner.run(), (tmp_path / "attempts").read_text().count("x") if (tmp_path / "attempts").exists() else 0

    yield run
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_runtime_that_fails_before_the_server_is_started_once_more(run_boot, caplog):
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.server.runtime"):
        code, attempts = run_boot('echo -n x >> "$ATTEMPTS"; [ "$(cat "$ATTEMPTS")" = xx ] && exit 0; exit 1\n')
    assert (code, attempts) == (0, 2), "the second start worked"
    assert "before the server came up (attempt 1 of 2)" in caplog.text


def test_a_runtime_that_keeps_failing_is_given_up_after_the_attempts(run_boot):
    assert run_boot('echo -n x >> "$ATTEMPTS"; exit 7\n') == (7, 2)
    assert run_boot('echo -n x >> "$ATTEMPTS"; exit 7\n', attempts=1)[0] == 7


def test_no_second_start_after_a_server_that_refused_to_start(run_boot, tmp_path, caplog):
    """A server that cannot hold its workers (server/limits.py) says so in the block's refusal file:
    starting the runtime again would only repeat the refusal after the retry pause."""
    refused = tmp_path / "server-refused"
    with caplog.at_level(logging.ERROR, logger="parsl_dragon.server.runtime"):
        code, attempts = run_boot('echo -n x >> "$ATTEMPTS"; echo too many workers > "$REFUSED"; exit 2\n',
                                  env={"REFUSED": str(refused)}, refused_file=str(refused))
    assert (code, attempts) == (2, 1)
    assert "refused to start" in caplog.text


def test_no_second_start_once_the_server_had_come_up(run_boot):
    script = 'echo -n x >> "$ATTEMPTS"; echo {} > "$CONN"; sleep 1; rm "$CONN"; exit 1\n'
    assert run_boot(script) == (1, 1), "a runtime that failed after the server was up is not restarted"


def test_server_flag_finds_the_value():
    args = ["--connection-file", "/b/connection.json", "--debug"]
    assert boot.server_flag(args, "--connection-file") == "/b/connection.json"
    assert boot.server_flag(args, "--log-file") is None and boot.server_flag(["--debug"], "--debug") is None


# ---------------------------------------------------------------- block dir and shim (no symlinks followed)

def _run_shim(tmp_path, values, *args):
    """Run a dragon-config shim whose real command echoes what it was asked."""
    real = tmp_path / "real dragon-config"  # a space: the path is quoted in the shim
    real.write_text('#!/bin/sh\necho "real: $*"\n')
    real.chmod(0o755)
    shim = tmp_path / "dragon-config"
    shim.write_text(bootdir.dragon_config_shim(values, str(real)))
    shim.chmod(0o755)
    return subprocess.run([str(shim), *args], capture_output=True, text=True, check=True).stdout


def test_dragon_config_shim_answers_gets_as_the_real_one_and_defers_the_rest(tmp_path):
    values = {"cuda_runtime_lib": "/opt/cuda/lib64", "odd": "it's $HOME `x`\nline 2"}
    assert _run_shim(tmp_path, values, "--get=cuda_runtime_lib") == "/opt/cuda/lib64\n"
    assert _run_shim(tmp_path, values, "--get=odd") == "it's $HOME `x`\nline 2\n", "taken literally"
    assert _run_shim(tmp_path, values, "--get=hip_runtime_lib") == "\n", "an unknown key: an empty line"
    assert _run_shim(tmp_path, values, "-g", "cuda_runtime_lib") == "real: -g cuda_runtime_lib\n"
    assert _run_shim(tmp_path, values, "add", "--cuda-runtime-lib=/x") == "real: add --cuda-runtime-lib=/x\n"
    assert _run_shim(tmp_path, None, "--get=cuda_runtime_lib") == "real: --get=cuda_runtime_lib\n", \
        "values that could not be read: every call goes to the real one"


@pytest.mark.parametrize("content, expected", [
    (None, {}),  # no file: the real one prints an empty line for every key
    ("not json", {}),
    ('{"cuda_runtime_lib": "/opt/cuda/lib64", "n": 3}', {"cuda_runtime_lib": "/opt/cuda/lib64", "n": "3"}),
    ('["a list"]', None),
    ('{"a key; rm -rf /": "x"}', None),
])
def test_dragon_config_values_read_the_file_as_the_real_command_does(tmp_path, content, expected):
    path = tmp_path / "dragon-config.json"
    if content is not None:
        path.write_text(content)
    assert bootdir.dragon_config_values(str(path)) == expected
    assert bootdir.dragon_config_values(None) is None


def test_the_block_shim_answers_as_the_installed_dragon_config(tmp_path):
    """The shim the block writes and Dragon's own command print the same for the runtime's questions."""
    real = shutil.which("dragon-config", path=os.path.dirname(sys.executable))
    if real is None:
        pytest.skip("no dragon-config in this environment")
    bindir = bootdir.shim_dir(str(tmp_path))
    for key in ("cuda_runtime_lib", "hip_runtime_lib", "ze_runtime_lib"):
        ours = subprocess.run([os.path.join(bindir, "dragon-config"), f"--get={key}"], capture_output=True,
                              text=True, check=True).stdout
        theirs = subprocess.run([real, f"--get={key}"], capture_output=True, text=True, check=True).stdout
        assert ours == theirs


def test_block_dir_is_made_0700_and_a_looser_bin_dir_of_ours_is_tightened(tmp_path):
    made = tmp_path / "block-0"
    private_directory(str(made))  # boot.main's first step
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    loose = made / "bin"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    bootdir.shim_dir(str(made))
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_cleanup_shim_refuses_a_bin_dir_others_can_write(tmp_path, mode):
    shared = tmp_path / "bin"
    shared.mkdir()
    os.chmod(shared, mode)
    with pytest.raises(InsecurePath, match="group or others"):
        bootdir.shim_dir(str(tmp_path))
    assert stat.S_IMODE(shared.stat().st_mode) == mode, "left as it was"
    assert os.listdir(shared) == [], "no shim written into it"


def test_block_dir_refuses_a_symlink_and_a_file(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(InsecurePath, match="symbolic link"):
        private_directory(str(tmp_path / "link"))
    (tmp_path / "file").write_text("")
    with pytest.raises(InsecurePath, match="not a directory"):
        private_directory(str(tmp_path / "file"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_cleanup_shim_refuses_a_bin_dir_of_another_user(tmp_path):
    theirs = tmp_path / "bin"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(InsecurePath, match="belongs to uid 65534"):
        bootdir.shim_dir(str(tmp_path))


def test_cleanup_shim_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    block = tmp_path / "block"
    (block / "bin").mkdir(parents=True, mode=0o700)
    (block / "bin" / "dragon-cleanup").symlink_to(victim)
    bindir = bootdir.shim_dir(str(block))
    shim = block / "bin" / "dragon-cleanup"
    assert victim.read_text() == "precious\n", "the shim was written through the symlink"
    assert not shim.is_symlink() and shim.read_text() == bootdir.CLEANUP_SHIM
    assert stat.S_IMODE(shim.stat().st_mode) == 0o755
    assert stat.S_IMODE(os.stat(bindir).st_mode) == 0o700
    assert sorted(os.listdir(bindir)) == ["dragon-cleanup", "dragon-config"], "no temporary file left"


def test_cleanup_shim_refuses_a_bin_dir_that_is_a_symlink(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    block = tmp_path / "block"
    block.mkdir(mode=0o700)
    (block / "bin").symlink_to(elsewhere)
    with pytest.raises(InsecurePath, match="symbolic link"):
        bootdir.shim_dir(str(block))
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
    return processes.process_stat(pid)[1]


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
    with caplog.at_level(logging.INFO, logger="parsl_dragon.server.runtime"):
        code, attempts = run_boot(STOPPABLE, driver=processes.DriverWatch(driver.pid, _ticks(driver.pid) + 1))
    assert (code, attempts) == (0, 1)
    assert (tmp_path / "stopped").read_text() == "stopped\n", "the runtime was asked to stop (SIGINT)"
    assert time.monotonic() - started < 5
    assert f"driver process {driver.pid}" in caplog.text and "stopping the runtime" in caplog.text
    driver.wait()


def test_a_stop_signal_stops_the_runtime_the_same_way(run_boot, tmp_path, caplog):
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()  # Boot's handler is ours meanwhile
    with caplog.at_level(logging.INFO, logger="parsl_dragon.server.runtime"):
        assert run_boot(STOPPABLE) == (0, 1)
    assert (tmp_path / "stopped").read_text() == "stopped\n"
    assert "Received SIGTERM: stopping the runtime" in caplog.text


def test_boot_does_not_start_a_runtime_for_a_driver_already_gone(run_boot, spawn, tmp_path, caplog):
    driver = spawn()
    driver.kill()
    driver.wait()
    with caplog.at_level(logging.INFO, logger="parsl_dragon.server.runtime"):
        assert run_boot(STOPPABLE, driver=processes.DriverWatch(driver.pid)) == (0, 0)
    assert "does not exist" in caplog.text and "not starting the runtime" in caplog.text


def test_boot_kills_a_runtime_that_ignores_the_stop(run_boot, spawn, monkeypatch):
    monkeypatch.setattr(runtime, "STARTUP_STOP_GRACE_SECONDS", 0.5)
    driver = spawn()
    watcher = processes.DriverWatch(driver.pid, _ticks(driver.pid) + 1)
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
    assert run_boot(RUNTIME_WITH_A_SERVER, driver=processes.DriverWatch(driver.pid, _ticks(driver.pid) + 1)) == (0, 1)
    assert (tmp_path / "stopped").read_text() == "server-stopped\n", "SIGTERM to the server, no SIGINT to dragon"
    assert time.monotonic() - started < RUNTIME_STOP_GRACE_SECONDS
    driver.wait()


def test_a_pid_in_the_connection_file_without_the_token_is_not_signalled(run_boot, spawn, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "RUNTIME_STOP_GRACE_SECONDS", 0.5)
    bystander, driver = spawn(), spawn()
    threading.Timer(0.6, driver.kill).start()
    code, _ = run_boot(RUNTIME_WITH_A_SERVER, env={"SERVER_PID": str(bystander.pid)},
                       driver=processes.DriverWatch(driver.pid, _ticks(driver.pid) + 1))
    assert code == -signal.SIGKILL, "nothing asked would stop it: killed after the grace period"
    assert bystander.poll() is None, "a process without the block token was signalled"
    driver.wait()


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
    monkeypatch.setattr(shm, "SHM_DIR", str(tmp_path))  # never the real /dev/shm others' leak checks watch
    pool = str(tmp_path / "DDparsldragontest")  # no name Dragon's scheme would derive from a pid
    with caplog.at_level(logging.INFO, logger="parsl_dragon.server.runtime"):
        assert run_boot(RUNTIME_WITH_A_POOL.format(python=sys.executable), script_is_program=True,
                        env={"POOL": pool}) == (9, 1)
    assert not os.path.exists(pool), "the runtime's pool outlived it"
    assert f"Runtime uses shm ['{pool}']" in caplog.text
