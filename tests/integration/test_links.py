"""Links that drop, stall or lie: sessions resume, lost tasks fail loudly, nothing hangs.

A second executor attaches to a live server through a loopback TCP proxy
(``tcpproxy.TcpProxy``) and the tests cut, stall or blackhole that link mid-task.
"""
import dataclasses
import os
import time

import pytest
from parsl import python_app

from parsl_dragon import DragonExecutor
from parsl_dragon.errors import AuthenticationFailed, PayloadTooLarge, ServerLost, TaskLost
from parsl_dragon.wire.connection import connection_path, read_connection, write_connection

from .tcpproxy import TcpProxy


def nap_then_return(seconds, value):
    import time
    time.sleep(seconds)
    return value


@python_app
def ready():
    return "ready"


@python_app
def giant_result(n_bytes):
    return b"x" * n_bytes


@python_app
def length_of(data):
    return len(data)


def _serve(load_dfk, tmp_path, **executor_kwargs):
    server_dir = str(tmp_path / "shared")
    load_dfk(server_path=server_dir, **executor_kwargs)
    assert ready().result(timeout=120) == "ready"
    return read_connection(connection_path(server_dir))


@pytest.fixture
def shared_server(load_dfk, tmp_path):
    """An owner DFK with a live server at server_path (server lease 3 s); its connection info."""
    return _serve(load_dfk, tmp_path)


@pytest.fixture
def patient_server(load_dfk, tmp_path):
    """The same with a 30 s lease: copying a gigabyte in the driver holds the GIL for seconds on
    a busy machine, and these tests are about sizes, not leases."""
    return _serve(load_dfk, tmp_path, heartbeat_threshold=30)


@pytest.fixture
def via_proxy(shared_server, tmp_path):
    """A second executor attached to the shared server through a TCP proxy we control."""
    host, port = shared_server.address.rsplit("//", 1)[1].rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    proxied_dir = tmp_path / "proxied"
    proxied_dir.mkdir(mode=0o700)
    # the copy names no Unix socket: the proxied link is TCP + CURVE, through the proxy
    write_connection(connection_path(str(proxied_dir)),
                     dataclasses.replace(shared_server, address=proxy.address, local_address=None))
    executor = DragonExecutor(label="viaproxy", server_path=str(proxied_dir), heartbeat_period=1.0,
                              heartbeat_threshold=20)
    executor.run_dir = str(tmp_path / "proxied-run")
    executor.start()
    try:
        yield executor, proxy
    finally:
        executor.shutdown()
        proxy.close()


def test_a_cut_link_resumes_its_session_and_the_result_arrives(via_proxy):
    executor, proxy = via_proxy
    future = executor.submit(nap_then_return, {}, 3, "survived")
    time.sleep(1.0)
    proxy.cut()
    assert future.result(timeout=60) == "survived"
    assert proxy.accepted >= 2, "the client reconnected through the proxy"
    assert executor.submit(nap_then_return, {}, 0, "after").result(timeout=60) == "after"


def test_a_task_lost_in_flight_fails_with_task_lost_not_silence(via_proxy):
    executor, proxy = via_proxy
    proxy.swallow(True)  # the task's bytes never reach the server
    future = executor.submit(nap_then_return, {}, 0, "never")
    time.sleep(1.0)
    proxy.cut()
    proxy.swallow(False)
    with pytest.raises(TaskLost, match="lost in flight"):
        future.result(timeout=60)
    assert executor.submit(nap_then_return, {}, 0, "next").result(timeout=60) == "next", "the session goes on"


def test_a_client_the_server_dropped_fails_its_tasks_at_once_instead_of_hanging(via_proxy, shared_server):
    executor, proxy = via_proxy
    future = executor.submit(nap_then_return, {}, 30, "too late")
    time.sleep(1.0)
    proxy.stall(True)   # both ways: the server's lease of this client (3 s) runs out
    time.sleep(6.0)
    proxy.stall(False)
    restored = time.monotonic()
    with pytest.raises(ServerLost, match="no session"):
        future.result(timeout=15)
    assert time.monotonic() - restored < 10, "lost when the server said so, not after our own 20 s lease"


def test_a_connection_file_with_a_foreign_server_key_is_refused(shared_server, tmp_path):
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir(mode=0o700)
    import zmq
    public, _ = zmq.curve_keypair()
    write_connection(connection_path(str(forged_dir)),
                     dataclasses.replace(shared_server, server_public_key=public.decode()))
    intruder = DragonExecutor(label="forged", server_path=str(forged_dir))
    intruder.run_dir = str(tmp_path / "forged-run")
    with pytest.raises(AuthenticationFailed, match="is not the server key in"):
        intruder.start()
    intruder.shutdown()


GIB = 1 << 30


@python_app
def patterned(n_bytes):
    """``n_bytes`` whose byte i is i % 251 (a prime: a frame shifted by a whole chunk shows)."""
    pattern = bytes(range(251))
    return (pattern * (n_bytes // 251 + 1))[:n_bytes]


@python_app
def digest(data):
    import hashlib
    return len(data), hashlib.sha256(data).hexdigest()


def _pattern(n_bytes):
    return (bytes(range(251)) * (n_bytes // 251 + 1))[:n_bytes]


def test_a_result_of_2_5_gib_arrives_intact_through_frames_of_1_gib(patient_server):
    size = int(2.5 * GIB)
    data = patterned(size).result(timeout=900)
    assert len(data) == size
    for at in (0, 1, GIB - 1, GIB, GIB + 1, 2 * GIB - 1, 2 * GIB, 2 * GIB + 1, size - 1, 12345678, size // 3):
        assert data[at] == at % 251, f"byte {at}: the frames were joined out of order"
    del data
    assert ready().result(timeout=60) == "ready", "the worker and its link go on"


def test_an_argument_of_2_5_gib_arrives_intact(patient_server):
    import hashlib
    data = _pattern(int(2.5 * GIB))
    expected = (len(data), hashlib.sha256(data).hexdigest())
    assert digest(data).result(timeout=900) == expected
    del data
    assert ready().result(timeout=60) == "ready"


def test_a_payload_over_max_payload_bytes_fails_its_own_task_only(load_dfk):
    load_dfk(max_payload_bytes=1 << 20, heartbeat_threshold=30)
    with pytest.raises(PayloadTooLarge, match=r"result of task \d+ is 2,097,1\d\d bytes \(2.0 MiB\), over "
                                              r"max_payload_bytes 1,048,576 \(1.0 MiB"):
        giant_result(2 << 20).result(timeout=120)
    started = time.monotonic()
    with pytest.raises(PayloadTooLarge, match=r"packed task \(length_of with its arguments\) is [\d,]+ bytes"):
        length_of(b"y" * (2 << 20)).result(timeout=60)
    assert time.monotonic() - started < 30, "refused at submit"
    assert length_of(b"y" * 1000).result(timeout=60) == 1000, "the block goes on"


@python_app
def nap(seconds, value):
    import time
    time.sleep(seconds)
    return value


def _kill_connections_to(port):
    """Abort every TCP connection to ``port`` on this host (``ss -K``: the kernel resets them)."""
    import shutil
    import subprocess
    if shutil.which("ss") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("ss (iproute2) is missing; scripts/system-packages.sh installs it")
        pytest.skip("ss (iproute2) is not installed")
    done = subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", f":{port}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def tcp_shared_server(load_dfk, tmp_path, monkeypatch):
    """A shared server whose workers link over TCP + CURVE, as on another node (no Unix socket)."""
    monkeypatch.setenv("PARSL_DRAGON_LOCAL_LINKS", "0")
    return _serve(load_dfk, tmp_path)


def test_a_cut_worker_link_resyncs_and_the_result_arrives(tcp_shared_server):
    import re
    shared_server = tcp_shared_server
    log = open(shared_server.log_path).read()
    port = int(re.search(r"backend at tcp://127\.0\.0\.1:(\d+)", log).group(1))
    future = nap(3, "worker link survived")
    time.sleep(1.5)
    _kill_connections_to(port)
    assert future.result(timeout=60) == "worker link survived"
    deadline = time.monotonic() + 10
    while "re-synced after its link dropped" not in open(shared_server.log_path).read():
        assert time.monotonic() < deadline, "the worker never re-synced"
        time.sleep(0.2)
    assert ready().result(timeout=60) == "ready"
