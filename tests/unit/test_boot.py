"""Unit tests for the pure helpers of parsl_dragon.server.boot (no Dragon runtime is started)."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

from parsl_dragon.server import boot


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
    assert env[boot.TOKEN_VAR] == "tok123"
    assert env["PATH"] == os.path.dirname(sys.executable) + os.pathsep + "/usr/bin"
    assert env["SOMETHING_ELSE"] == "kept"
    assert boot.TOKEN_VAR not in os.environ  # the caller's environment is untouched


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
        env.pop(boot.TOKEN_VAR, None)
        if token is not None:
            env[boot.TOKEN_VAR] = token
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
    in_other_var = spawn(extra_env={"UNRELATED": f"{boot.TOKEN_VAR}={token}"})  # needle inside another value
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

    def run(script, **kwargs):
        runtime = _write_executable(tmp_path / "runtime", "#!/bin/sh\n" + script)
        env = dict(os.environ, ATTEMPTS=str(tmp_path / "attempts"), CONN=str(tmp_path / "connection.json"))
        runner = boot.Boot([str(runtime)], env, str(tmp_path / "dragon.log"), uuid.uuid4().hex,
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
