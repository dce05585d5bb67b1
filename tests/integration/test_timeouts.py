"""Timeouts keep the seed's meaning: milliseconds, ``-1`` waits forever, argument > environment.

``timeout_ms`` / ``PARSL_DRAGON_TIMEOUT`` bounds the handshake with a server;
``startup_timeout_ms`` / ``PARSL_DRAGON_STARTUP_TIMEOUT`` bounds a block's start-up;
``owner_timeout_ms`` / ``PARSL_DRAGON_OWNER_TIMEOUT`` the server's wait for its owner once it
has published (``--owner-timeout-ms``). The start-up timeout firing is tested in
``test_lifecycle.py::test_startup_timeout_fails_tasks_with_log_location``.
"""
import glob
import logging
import os
import socket
import threading
import time

import parsl
import pytest
import zmq
from parsl import python_app

from parsl_dragon import DragonExecutor, HandshakeTimeout
from parsl_dragon.driver.client import DragonClient
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire import security
from parsl_dragon.wire.connection import ConnectionInfo, connection_path, write_connection

SLACK = 3.0  # seconds of scheduling noise allowed past a timeout on a busy 2-core machine


@python_app
def square(x):
    return x * x


def _server_argv(tmp_path):
    log = glob.glob(str(tmp_path / "runinfo" / "*" / "dragon" / "block-0" / "server.log"))[0]
    return open(log).read().split("argv", 1)[1].splitlines()[0]


def test_infinite_timeouts_as_arguments(load_dfk, tmp_path):
    dfk = load_dfk(timeout_ms=-1, startup_timeout_ms=-1, owner_timeout_ms=-1)
    assert square(4).result(timeout=180) == 16
    executor = dfk.executors["dragon"]
    assert executor.settings.timeout_s is None and executor.settings.startup_timeout_s is None
    assert executor._client.timeout_s is None
    assert "'--owner-timeout-ms', '-1'" in _server_argv(tmp_path), "the server waits for its owner forever too"


def test_timeouts_from_the_environment(load_dfk, monkeypatch, tmp_path):
    monkeypatch.setenv("PARSL_DRAGON_TIMEOUT", "-1")
    monkeypatch.setenv("PARSL_DRAGON_STARTUP_TIMEOUT", "-1")
    monkeypatch.setenv("PARSL_DRAGON_OWNER_TIMEOUT", "-1")
    dfk = load_dfk()
    assert square(5).result(timeout=180) == 25
    settings = dfk.executors["dragon"].settings
    assert (settings.timeout_ms, settings.startup_timeout_ms, settings.owner_timeout_ms) == (-1, -1, -1)
    assert "'--owner-timeout-ms', '-1'" in _server_argv(tmp_path)


# ---------------------------------------------------------------- the handshake timeout

def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fake_connection(directory, port, server_public):
    """A connection file that names a live pid (ours) but a port where no server answers."""
    info = ConnectionInfo(
        protocol=p.PROTOCOL_VERSION, address=f"tcp://127.0.0.1:{port}", server_public_key=server_public.decode(),
        host=socket.gethostname(), pid=os.getpid(), launcher_pid=None, job_id=None, block_id=None,
        server_id="nobody-home", created=time.time(), log_path="/nonexistent/server.log")
    write_connection(connection_path(str(directory)), info)
    return info


@pytest.fixture
def keys():
    key_path = os.environ["PARSL_DRAGON_KEY_PATH"]
    return security.load_pair(key_path, security.CLIENT), security.load_pair(key_path, security.SERVER)


def _client(client_keys, timeout_s):
    client = DragonClient(client_keys, timeout_s=timeout_s, heartbeat_period=1.0, heartbeat_threshold=3,
                          on_results=lambda *a: None, on_monitoring=lambda *a: None,
                          on_server_lost=lambda *a: None)
    client.start()
    return client


def test_handshake_timeout_is_raised_within_timeout(keys, tmp_path):
    client_keys, server_keys = keys
    info = _fake_connection(tmp_path, _free_port(), server_keys.public)
    client = _client(client_keys, timeout_s=1.5)
    try:
        started = time.monotonic()
        with pytest.raises(HandshakeTimeout, match=r"no answer from the server at tcp://127\.0\.0\.1:\d+ within "
                                                   r"1\.5s \(timeout_ms / PARSL_DRAGON_TIMEOUT\)") as error:
            client.connect(info, owner=False)
        waited = time.monotonic() - started
    finally:
        client.close()
    print(f"HandshakeTimeout after {waited:.2f}s (timeout 1.5s): {error.value}")
    assert 1.5 <= waited < 1.5 + SLACK


@pytest.mark.parametrize("env,argument,expected", [("1200", None, 1.2), ("60000", 1000, 1.0)])
def test_executor_start_gives_up_on_a_silent_server(keys, tmp_path, monkeypatch, env, argument, expected):
    """PARSL_DRAGON_TIMEOUT (or the argument, which wins) bounds the handshake with the server a
    connection file names; start() then removes the file and lets the executor start its own."""
    _, server_keys = keys
    server_dir = tmp_path / "server"
    _fake_connection(server_dir, _free_port(), server_keys.public)
    monkeypatch.setenv("PARSL_DRAGON_TIMEOUT", env)
    executor = DragonExecutor(server_path=str(server_dir), timeout_ms=argument)
    executor.run_dir = str(tmp_path / "runinfo")
    records = _Records()
    logger = logging.getLogger("parsl_dragon.driver.executor")
    logger.addHandler(records)
    try:
        started = time.monotonic()
        executor.start()
        waited = time.monotonic() - started
    finally:
        logger.removeHandler(records)
        executor.shutdown()
    print(f"start() gave up on the silent server after {waited:.2f}s (timeout {expected}s)")
    assert expected <= waited < expected + SLACK
    assert any("does not answer" in m and f"within {expected:.1f}s" in m for m in records.messages), records.messages
    assert not os.path.exists(connection_path(str(server_dir))), "the stale connection file is removed"


class _Records(logging.Handler):
    """Collects log messages (works without pytest's logging plugin)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _late_server(port, server_keys, delay, ready):
    """A CURVE ROUTER that binds only after ``delay`` seconds, then welcomes one client."""
    context = zmq.Context()
    try:
        time.sleep(delay)
        sock = context.socket(zmq.ROUTER)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = server_keys.secret, server_keys.public, True
        sock.bind(f"tcp://127.0.0.1:{port}")
        ready.set()
        if sock.poll(60_000):
            identity, *frames = sock.recv_multipart()
            assert isinstance(p.decode(frames), p.Hello)
            sock.send_multipart([identity, *p.encode(p.Welcome(
                server_id="late", host="h", parsl_version=parsl.__version__, python_version=p.PYTHON_VERSION,
                nodes=["h"], workers=1, cores=[1], gpus=[0]))])
            time.sleep(0.5)
    finally:
        context.destroy(linger=0)


def test_minus_one_waits_for_a_late_server(keys, tmp_path):
    """timeout_ms=-1: the handshake outlasts any finite timeout and succeeds when the server answers."""
    client_keys, server_keys = keys
    port = _free_port()
    info = _fake_connection(tmp_path, port, server_keys.public)
    ready = threading.Event()
    server = threading.Thread(target=_late_server, args=(port, server_keys, 4.0, ready), daemon=True)
    server.start()
    client = _client(client_keys, timeout_s=None)  # what timeout_ms=-1 resolves to
    try:
        started = time.monotonic()
        link = client.connect(info, owner=False)
        waited = time.monotonic() - started
    finally:
        client.close()
        server.join(timeout=70)
    print(f"timeout -1: Welcome after {waited:.2f}s")
    assert ready.is_set() and link.server_id == "late"
    assert waited >= 3.5


# ---------------------------------------------------------------- the owner timeout

def test_a_block_whose_driver_never_connects_stops_after_the_owner_timeout(no_leaks, tmp_path):
    """A batch block (no driver pid to follow) whose driver never comes: its server gives up
    ``owner_timeout`` after publishing, and the runtime goes with it, well before 300 s."""
    import shlex
    import subprocess

    from parsl_dragon.driver.blocks import BlockLaunch, boot_command
    from parsl_dragon.wire.connection import read_connection

    security.load_pair(os.environ["PARSL_DRAGON_KEY_PATH"], security.SERVER)
    block_dir = tmp_path / "block-0"
    launch = BlockLaunch("0", str(block_dir), connection_path(str(block_dir)), launched=time.time())
    command = boot_command(launch, os.environ["PARSL_DRAGON_KEY_PATH"], "tcp",
                           {"owner_timeout_ms": 5000, "workers_per_node": 1, "heartbeat_period": 1.0})
    started = time.monotonic()
    boot = subprocess.Popen(shlex.split(command), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        code = boot.wait(timeout=120)
    finally:
        if boot.poll() is None:
            boot.kill()
            boot.wait()
    took = time.monotonic() - started
    server_log = (block_dir / "server.log").read_text()
    print(f"block without a driver stopped after {took:.1f}s (owner timeout 5s)")
    assert "no owner connected within 5s of the connection file being written" in server_log
    assert code == 0 and took < 120
    with pytest.raises(FileNotFoundError):
        read_connection(launch.connection_file)
