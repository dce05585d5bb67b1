"""Unit tests for parsl_dragon.cli (no Dragon runtime: fake connection files, `sleep`s, a fake server)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict

import parsl
import pytest
import zmq

from parsl_dragon import cli
from parsl_dragon.cli import discover, sessions, status, teardown
from parsl_dragon.cli.block import wait_until
from parsl_dragon.host import shm
from parsl_dragon.host.processes import carries_token, processes_with_token
from parsl_dragon.server.auth import CLIENT_DOMAIN, start_authenticator
from parsl_dragon.vocabulary import ENV_BLOCK_TOKEN
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire import security
from parsl_dragon.wire.connection import ConnectionInfo, connection_path, write_connection
from tests.conftest import OTHER_UID

HERE = socket.gethostname()
ELSEWHERE = "node-that-is-not-" + HERE


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _info(**overrides) -> ConnectionInfo:
    values = dict(protocol=p.PROTOCOL_VERSION, address=f"tcp://127.0.0.1:{_closed_port()}",
                  server_public_key=security.ephemeral_pair().public.decode(), host=HERE, pid=1,
                  launcher_pid=None, job_id=None, block_id="0", server_id=uuid.uuid4().hex,
                  created=time.time() - 75, log_path="/nonexistent/block-0/server.log",
                  block_token=uuid.uuid4().hex)
    values.update(overrides)
    return ConnectionInfo(**values)


def _write(directory, info: ConnectionInfo) -> str:
    path = connection_path(str(directory))
    write_connection(path, info)
    return path


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def wait_for(condition, timeout=5.0):
    return wait_until(condition, timeout, 0.02)


def run(capsys, *argv):
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def client_keys(_isolated_key_path):
    return security.load_pair(_isolated_key_path, security.CLIENT)


@pytest.fixture
def fake_shm(tmp_path, monkeypatch):
    """Pools live in ``tmp_path/shm`` (never the real /dev/shm) under boot's naming."""
    directory = tmp_path / "shm"
    directory.mkdir()
    monkeypatch.setattr(shm, "pool_prefix", lambda pid: str(directory / f"DD{str(os.getuid())[-3:]}{str(pid)[-3:]}"))
    monkeypatch.setattr(shm, "_dragon_launchers", lambda: [])
    return directory


class FakeServer:
    """A CURVE ROUTER that welcomes trusted clients and records their messages (no Dragon)."""

    def __init__(self, key_path: str, trusted, server_id: str) -> None:
        self.server_id = server_id
        self.context = zmq.Context()
        self.keys = security.load_pair(key_path, security.SERVER)
        self.auth = start_authenticator(self.context, trusted, [])
        self.sock = self.context.socket(zmq.ROUTER)
        security.make_curve_server(self.sock, self.keys.secret, CLIENT_DOMAIN)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.received = []
        self.on_shutdown = lambda: None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            identity, *frames = self.sock.recv_multipart()
            message = p.decode(frames)
            self.received.append(message)
            if isinstance(message, p.Hello):
                self.sock.send_multipart([identity, *p.encode(p.Welcome(
                    server_id=self.server_id, host=ELSEWHERE, parsl_version=parsl.__version__,
                    python_version=p.PYTHON_VERSION, nodes=[ELSEWHERE], workers=1))])
            elif isinstance(message, p.Shutdown):
                self.on_shutdown()

    def info(self, **overrides) -> ConnectionInfo:
        values = dict(address=f"tcp://127.0.0.1:{self.port}", server_public_key=self.keys.public.decode(),
                      host=ELSEWHERE, pid=4242, server_id=self.server_id)
        values.update(overrides)
        return _info(**values)

    def kinds(self):
        """Names of the messages received, heartbeats left out."""
        return [type(m).__name__ for m in self.received if not isinstance(m, p.Heartbeat)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.auth.stop()
        self.context.destroy(linger=0)


@pytest.fixture
def fake_server(_isolated_key_path, client_keys):
    servers = []

    def make(trusted=None, server_id="fake-server-1"):
        server = FakeServer(_isolated_key_path, [client_keys.public] if trusted is None else trusted, server_id)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


# ---------------------------------------------------------------- arguments

def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_status_defaults():
    args = cli.build_parser().parse_args(["status"])
    assert (args.paths, args.json, args.timeout, args.key_path) == ([], False, sessions.HANDSHAKE_TIMEOUT, None)
    assert args.run is status.cmd_status


def test_teardown_arguments():
    args = cli.build_parser().parse_args(["teardown", "a", "b/c", "--force", "--timeout", "2.5", "--key-path", "k"])
    assert (args.paths, args.force, args.timeout, args.key_path) == (["a", "b/c"], True, 2.5, "k")
    assert args.run is teardown.cmd_teardown
    assert cli.build_parser().parse_args(["teardown"]).timeout == teardown.TEARDOWN_TIMEOUT


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_bad_timeout_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["status", "--timeout", value])
    assert exit_info.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_missing_path_is_a_usage_error(tmp_path, capsys):
    code, out, err = run(capsys, "status", str(tmp_path / "nope"))
    assert code == 2 and not out
    assert err.strip() == f"parsl-dragon: no such file or directory: {tmp_path / 'nope'}"


def test_key_path_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PARSL_DRAGON_KEY_PATH", str(tmp_path / "env"))
    assert sessions.client_key_path(str(tmp_path / "arg")) == str(tmp_path / "arg")
    assert sessions.client_key_path(None) == str(tmp_path / "env")
    monkeypatch.delenv("PARSL_DRAGON_KEY_PATH")
    assert sessions.client_key_path(None) == os.path.expanduser("~/.parsl_dragon/keys")


def test_runs_as_a_module_without_importing_the_server():
    """`python -m parsl_dragon.cli` works, and the CLI (login-node side) never loads parsl_dragon.server."""
    done = subprocess.run([sys.executable, "-m", "parsl_dragon.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("usage: parsl-dragon"), done.stderr
    check = ("import sys, parsl_dragon.cli; "
             "print([m for m in sys.modules if m.startswith(('parsl_dragon.server', 'dragon'))])")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


# ---------------------------------------------------------------- discovery

def test_finds_connection_files_in_nested_directories(tmp_path):
    deep = tmp_path / "runinfo" / "000" / "dragon" / "block-0"
    shallow = tmp_path / "shared"
    for directory in (deep, shallow, tmp_path / "runinfo" / "001" / "dragon" / "block-1"):
        _write(directory, _info())
    (tmp_path / "runinfo" / "000" / "other.json").write_text("{}")
    os.symlink(shallow, tmp_path / "runinfo" / "link-to-shared")  # not followed
    found = discover.find_connection_files([str(tmp_path)])
    assert found == sorted([str(deep / "connection.json"), str(shallow / "connection.json"),
                            str(tmp_path / "runinfo/001/dragon/block-1/connection.json")])


def test_explicit_file_and_overlapping_paths_count_once(tmp_path):
    path = _write(tmp_path / "a", _info())
    other = tmp_path / "b" / "server.json"
    other.parent.mkdir()
    write_connection(str(other), _info())  # any name when given explicitly
    assert discover.find_connection_files([path, str(tmp_path), str(tmp_path / "a"), str(other)]) == [path, str(other)]


def test_default_paths(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert discover.default_paths({}) == [str(tmp_path / "runinfo")]
    assert discover.default_paths({"PARSL_DRAGON_SERVER_PATH": "/srv/x "}) == ["/srv/x", str(tmp_path / "runinfo")]


def test_default_paths_are_searched(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARSL_DRAGON_SERVER_PATH", str(tmp_path / "shared"))
    path = _write(tmp_path / "runinfo" / "000" / "dragon" / "block-0", _info(pid=_dead_pid()))
    code, out, _ = run(capsys, "status", "--json")
    assert code == 1
    assert [s["connection_file"] for s in json.loads(out)["servers"]] == [path]


def test_nothing_found(tmp_path, capsys):
    code, out, err = run(capsys, "status", str(tmp_path))
    assert code == 1 and not out
    assert "no connection files (connection.json) found under" in err
    code, out, _ = run(capsys, "status", str(tmp_path), "--json")
    assert code == 1 and json.loads(out) == {"servers": []}
    code, out, _ = run(capsys, "teardown", str(tmp_path))
    assert code == 0 and "nothing to tear down" in out


# ---------------------------------------------------------------- status

def test_dead_pid_is_stale(tmp_path, capsys):
    info = _info(pid=_dead_pid(), job_id="77")
    path = _write(tmp_path, info)
    code, out, err = run(capsys, "status", str(tmp_path), "--json")
    assert code == 1, err
    [record] = json.loads(out)["servers"]
    assert record["state"] == "stale" and f"pid {info.pid} is gone" in record["why"]
    assert record["connection_file"] == path and record["server_id"] == info.server_id
    assert record["this_host"] is True and 70 < record["age_s"] < 300 and record["job_id"] == "77"
    assert "block_token" not in record and "server_public_key" not in record
    code, out, _ = run(capsys, "status", str(tmp_path))
    assert out.startswith(f"stale        server {info.server_id}  block 0  job 77  age 1m")
    assert f"  why        server pid {info.pid} is gone from this host" in out


def test_recycled_pid_without_token_is_stale(tmp_path, capsys, spawn):
    sleeper = spawn()  # alive, but not carrying the file's token
    _write(tmp_path, _info(pid=sleeper.pid))
    code, out, _ = run(capsys, "status", str(tmp_path), "--json")
    [record] = json.loads(out)["servers"]
    assert code == 1 and record["state"] == "stale" and "now another process" in record["why"]


def test_live_pid_without_answer_is_unreachable(tmp_path, capsys, spawn, client_keys):
    token = uuid.uuid4().hex
    server = spawn(token=token)
    _write(tmp_path, _info(pid=server.pid, block_token=token))
    started = time.monotonic()
    code, out, _ = run(capsys, "status", str(tmp_path), "--json", "--timeout", "0.5")
    [record] = json.loads(out)["servers"]
    assert code == 1 and record["state"] == "unreachable" and "no answer" in record["why"]
    assert time.monotonic() - started < 10


def test_damaged_file(tmp_path, capsys):
    (tmp_path / "connection.json").write_text("{not json")
    code, out, _ = run(capsys, "status", str(tmp_path))
    assert code == 1
    assert out.startswith("damaged") and "unreadable or damaged" in out


# ---------------------------------------------------------------- connection files we must not trust or cannot use


def test_mistyped_pid_is_damaged_not_a_crash(tmp_path, capsys):
    path = tmp_path / "connection.json"
    path.write_text(json.dumps({**asdict(_info()), "pid": "4242"}))
    code, out, _ = run(capsys, "status", str(tmp_path), "--json")
    [record] = json.loads(out)["servers"]
    assert code == 1 and record["state"] == "damaged"
    assert "field 'pid' must be int, not str" in record["why"] and str(path) in record["why"]
    code, out, _ = run(capsys, "teardown", str(tmp_path))
    assert code == 1 and "nothing done" in out and "field 'pid'" in out and path.exists()


@pytest.mark.parametrize("explicit", [False, True])
def test_fifo_is_refused_without_hanging(tmp_path, capsys, deadline, explicit):
    fifo = tmp_path / "connection.json"
    os.mkfifo(fifo, 0o600)
    where = str(fifo if explicit else tmp_path)
    code, out, _ = run(capsys, "status", where)
    assert code == 1 and out.startswith(f"refused      {fifo}\n") and "it is a FIFO" in out
    code, out, _ = run(capsys, "teardown", where)
    assert code == 1 and "nothing done" in out and "FIFO" in out and fifo.exists()


def test_file_of_another_user_is_refused_and_nothing_it_names_is_touched(tmp_path, capsys, spawn):
    token = uuid.uuid4().hex
    victim = spawn(token=token)  # what a forged file could name: a process of ours with its token
    path = _write(tmp_path, _info(pid=victim.pid, block_token=token))
    os.chown(path, OTHER_UID, -1)
    code, out, _ = run(capsys, "status", str(tmp_path), "--json")
    [record] = json.loads(out)["servers"]
    assert code == 1 and record["state"] == "refused" and record["connection_file"] == path
    assert f"belongs to uid {OTHER_UID}" in record["why"] and "server_id" not in record
    code, out, _ = run(capsys, "teardown", str(tmp_path), "--force")
    assert code == 1 and "nothing done: refusing connection file" in out and "NOT CLEAN" in out
    assert os.path.exists(path) and victim.poll() is None


def test_file_in_a_directory_others_can_write_is_refused(tmp_path, capsys):
    shared = tmp_path / "shared"
    path = _write(shared, _info())
    os.chmod(shared, 0o777)
    code, out, _ = run(capsys, "status", str(shared))
    assert code == 1 and out.startswith(f"refused      {path}")
    assert f"directory of connection file {shared}" in out and f"chmod go-w {shared}" in out


def test_live_server(tmp_path, capsys, fake_server):
    server = fake_server()
    _write(tmp_path, server.info())
    code, out, err = run(capsys, "status", str(tmp_path))
    assert code == 0, err
    assert out.startswith("live         server fake-server-1") and f"({'another host'})" in out
    assert wait_for(lambda: server.kinds() == ["Hello", "Goodbye"])  # status never asks for a shutdown


def test_untrusted_key_is_rejected(tmp_path, capsys, fake_server):
    server = fake_server(trusted=[security.ephemeral_pair().public])
    _write(tmp_path, server.info())
    code, out, _ = run(capsys, "status", str(tmp_path), "--json")
    [record] = json.loads(out)["servers"]
    assert code == 1 and record["state"] == "rejected" and "not trust" in record["why"]


def test_other_server_at_the_address_is_stale(tmp_path, capsys, fake_server):
    server = fake_server(server_id="newer-server")
    _write(tmp_path, server.info(server_id="older-server"))
    code, out, _ = run(capsys, "status", str(tmp_path), "--json")
    [record] = json.loads(out)["servers"]
    assert code == 1 and record["state"] == "stale" and "newer-server" in record["why"]


def test_missing_key_directory_is_a_configuration_error(tmp_path, capsys, fake_server):
    _write(tmp_path, fake_server().info())
    code, out, err = run(capsys, "status", str(tmp_path), "--key-path", str(tmp_path / "no-keys"))
    assert code == 2 and not out
    assert err.strip() == f"parsl-dragon: key directory {tmp_path / 'no-keys'} does not exist " \
                          "(--key-path / PARSL_DRAGON_KEY_PATH)"
    assert not (tmp_path / "no-keys").exists()


def test_format_age():
    ages = [status.format_age(s) for s in (0, 59.9, 61, 3600, 3 * 86400 + 7200)]
    assert ages == ["0s", "59s", "1m01s", "1h00m", "3d02h"]


# ---------------------------------------------------------------- teardown: safety

@pytest.mark.parametrize("force", [False, True])
def test_teardown_never_kills_a_process_without_the_token(tmp_path, capsys, spawn, force):
    bystander = spawn()  # its pid is in the file, but it lacks the token: a recycled pid
    path = _write(tmp_path, _info(pid=bystander.pid, launcher_pid=bystander.pid))
    code, out, err = run(capsys, "teardown", str(tmp_path), "--timeout", "1", *(["--force"] if force else []))
    assert code == 0, out + err
    assert "SIG" not in out and "removed the stale connection file" in out
    time.sleep(0.2)
    assert bystander.poll() is None, "a process without the block token was signalled"
    assert not os.path.exists(path)


def test_teardown_without_token_in_file_signals_nothing(tmp_path, capsys, spawn, fake_shm):
    survivor = spawn()
    block_dir = tmp_path / "block-0"
    block_dir.mkdir()
    (block_dir / "boot.log").write_text(f"... INFO Started dragon (pid {survivor.pid}): dragon -s ...\n")
    pool = shm.pool_prefix(survivor.pid) + "def0M"
    open(pool, "w").close()
    path = _write(tmp_path, _info(pid=survivor.pid, block_token=None, log_path=str(block_dir / "server.log")))
    code, out, _ = run(capsys, "teardown", str(tmp_path), "--force")
    assert code == 1
    assert "names no block token: no process will be signalled" in out
    assert f"still running: [{survivor.pid}]" in out and "kept the connection file" in out
    assert f"kept the shm pools: runtime launcher {survivor.pid} is still running" in out
    assert "NOT CLEAN" in out
    assert survivor.poll() is None and os.path.exists(path) and os.path.exists(pool)


def test_teardown_kills_every_token_process_only(tmp_path, capsys, spawn, client_keys):
    token = uuid.uuid4().hex
    server, worker = spawn(token=token), spawn(token=token)
    other_block = spawn(token=uuid.uuid4().hex)
    bystander = spawn()
    path = _write(tmp_path, _info(pid=server.pid, block_token=token))
    code, out, err = run(capsys, "teardown", str(tmp_path), "--timeout", "1")
    assert code == 0, out + err
    assert "could not ask the server to shut down: no answer from tcp://127.0.0.1:" in out and "(--timeout)" in out
    assert f"sent SIGTERM to 2 processes carrying the block token: {sorted([server.pid, worker.pid])}" in out
    assert server.wait(timeout=5) == -signal.SIGTERM and worker.wait(timeout=5) == -signal.SIGTERM
    assert other_block.poll() is None and bystander.poll() is None
    assert not os.path.exists(path) and out.rstrip().endswith("=> done")


def test_teardown_escalates_to_sigkill(tmp_path, capsys, spawn, monkeypatch):
    token = uuid.uuid4().hex
    stubborn = spawn(argv=[sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                                 "print('ready', flush=True); time.sleep(300)"], token=token)
    wait_for(lambda: carries_token(stubborn.pid, token))
    time.sleep(0.5)  # let it install the handler
    monkeypatch.setattr(teardown, "TERM_GRACE", 1.0)
    _write(tmp_path, _info(pid=stubborn.pid, block_token=token))
    code, out, _ = run(capsys, "teardown", str(tmp_path), "--force")
    assert code == 0, out
    assert "sent SIGTERM" in out and f"sent SIGKILL to 1 processes carrying the block token: [{stubborn.pid}]" in out
    assert stubborn.wait(timeout=5) == -signal.SIGKILL


def test_teardown_signals_boot_process_proven_by_its_token_child(tmp_path, capsys, spawn):
    token = uuid.uuid4().hex
    block_dir = tmp_path / "block-0"
    # A stand-in boot process: no token itself, one child that carries it; its argv names the
    # boot module and the block dir, as the real one's does.
    fake_boot = spawn(argv=["sh", "-c", f"{ENV_BLOCK_TOKEN}={token} sleep 300 & wait",
                            "parsl_dragon.server.boot", str(block_dir)])
    assert wait_for(lambda: len(processes_with_token(token)) == 1)
    [runtime] = processes_with_token(token)
    _write(tmp_path, _info(pid=runtime, launcher_pid=fake_boot.pid, block_token=token,
                           log_path=str(block_dir / "server.log")))
    code, out, err = run(capsys, "teardown", str(tmp_path), "--force")
    assert code == 0, out + err
    assert f"sent SIGTERM to boot process {fake_boot.pid}" in out
    assert fake_boot.wait(timeout=5) == -signal.SIGTERM
    assert wait_for(lambda: not processes_with_token(token))


# ---------------------------------------------------------------- teardown: shm and files

def test_teardown_removes_pools_of_a_dead_launcher_from_boot_log(tmp_path, capsys, fake_shm):
    launcher = _dead_pid()
    prefix = shm.pool_prefix(launcher)
    pools = [f"{prefix}def0M", f"{prefix}inf0D"]
    unrelated = shm.pool_prefix(launcher + 1) + "def0M"
    for path in pools + [unrelated]:
        open(path, "w").close()
    block_dir = tmp_path / "block-0"
    block_dir.mkdir()
    (block_dir / "boot.log").write_text(f"2026-11-24 08:00:00 boot 1 INFO Started dragon (pid {launcher}): x\n")
    _write(tmp_path / "shared", _info(pid=_dead_pid(), log_path=str(block_dir / "server.log")))
    code, out, _ = run(capsys, "teardown", str(tmp_path / "shared"))
    assert code == 0, out
    assert f"removed 2 shm pools of runtime launcher {launcher} ({prefix}*)" in out
    assert not any(os.path.exists(path) for path in pools) and os.path.exists(unrelated)


def test_pools_shared_with_a_live_launcher_are_kept(fake_shm, monkeypatch):
    pool = shm.pool_prefix(12478) + "def0M"
    open(pool, "w").close()
    monkeypatch.setattr(shm, "_dragon_launchers", lambda: [3478])  # same last 3 digits, still alive
    assert teardown.remove_pools(12478, grace=0) == ([], [pool])
    assert os.path.exists(pool)


def test_a_pool_a_dying_process_still_maps_is_removed_once_it_is_unmapped(fake_shm, monkeypatch):
    pool = shm.pool_prefix(12479) + "def0M"
    open(pool, "w").close()
    monkeypatch.setattr(shm, "_dragon_launchers", lambda: [])
    answers = iter([{pool}, {pool}])  # mapped at the first two looks, then the process is gone
    monkeypatch.setattr(shm, "files_in_use", lambda files, exclude=(): next(answers, set()) & set(files))
    assert teardown.remove_pools(12479, grace=5.0) == ([pool], [])
    assert not os.path.exists(pool)


def test_damaged_file_is_left_alone(tmp_path, capsys):
    (tmp_path / "connection.json").write_text("[]")
    code, out, _ = run(capsys, "teardown", str(tmp_path))
    assert code == 1 and "nothing done" in out and (tmp_path / "connection.json").exists()


# ---------------------------------------------------------------- teardown: shutdown request

def test_teardown_of_a_remote_server_sends_shutdown_and_waits_for_its_file(tmp_path, capsys, fake_server):
    server = fake_server()
    path = _write(tmp_path, server.info())
    server.on_shutdown = lambda: os.unlink(path)  # what a real server does when it stops
    code, out, err = run(capsys, "teardown", str(tmp_path), "--timeout", "5")
    assert code == 0, out + err
    assert "asked the server to shut down" in out and "only the shutdown request is possible" in out
    assert "the server stopped: it removed its connection file" in out
    shutdown = [m for m in server.received if isinstance(m, p.Shutdown)]
    assert [m.reason for m in shutdown] == ["parsl-dragon teardown"]


def test_remote_server_that_does_not_stop_is_reported(tmp_path, capsys, fake_server):
    server = fake_server()
    path = _write(tmp_path, server.info())
    code, out, _ = run(capsys, "teardown", str(tmp_path), "--timeout", "0.5")
    assert code == 1 and "not known to have stopped" in out and os.path.exists(path)


def test_no_shutdown_for_a_different_server_at_the_address(tmp_path, capsys, fake_server):
    server = fake_server(server_id="newer-server")
    _write(tmp_path, server.info(server_id="older-server"))
    code, out, _ = run(capsys, "teardown", str(tmp_path), "--timeout", "0.5")
    assert "did not ask to shut down: another server (newer-server)" in out
    assert wait_for(lambda: server.kinds() == ["Hello", "Goodbye"])
