"""Same-host links: where their Unix sockets go, who may reach them, and which link a process opens."""
import os
import socket

import pytest
import zmq

from parsl_dragon.host import local_sockets
from parsl_dragon.server.links import Peers
from parsl_dragon.server.worker_side import bind_local_router
from parsl_dragon.vocabulary import (
    ENV_LOCAL_LINKS,
    ENV_SERVER_HOST,
    ENV_WORKER_ADDRESS,
    ENV_WORKER_LOCAL_ADDRESS,
    ENV_WORKER_SECRET,
    ENV_WORKER_SERVER_KEY,
)
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.security import make_worker_link


def test_a_short_block_directory_holds_its_sockets(tmp_path):
    block = tmp_path / "b"
    block.mkdir(mode=0o700)
    assert local_sockets.socket_directory(str(block)) == str(block)


def test_a_long_block_directory_gets_a_short_private_one_that_remove_takes_away(tmp_path):
    block = tmp_path / ("x" * 90)
    block.mkdir(mode=0o700)
    directory = local_sockets.socket_directory(str(block))
    assert directory != str(block) and len(local_sockets.address(directory, "clients.sock")) < 108
    assert os.stat(directory).st_mode & 0o777 == 0o700
    local_sockets.remove(str(block))
    assert not os.path.exists(directory)


def test_a_directory_others_can_enter_is_refused(tmp_path):
    block = tmp_path / "open"
    block.mkdir(mode=0o755)
    os.chmod(block, 0o755)
    with pytest.raises(PermissionError, match="not a private directory"):
        local_sockets.socket_directory(str(block))


def test_local_links_can_be_turned_off():
    assert local_sockets.enabled({}) and local_sockets.enabled({ENV_LOCAL_LINKS: "1"})
    assert not local_sockets.enabled({ENV_LOCAL_LINKS: "0"}) and not local_sockets.enabled({ENV_LOCAL_LINKS: "off"})


def _worker_env(host):
    server = zmq.curve_keypair()
    return {ENV_WORKER_ADDRESS: "tcp://10.0.0.1:5555", ENV_WORKER_SECRET: zmq.curve_keypair()[1].decode(),
            ENV_WORKER_SERVER_KEY: server[0].decode(), ENV_WORKER_LOCAL_ADDRESS: "ipc:///tmp/x/workers.sock",
            ENV_SERVER_HOST: host}


def test_a_worker_on_the_servers_host_takes_the_unix_socket_and_others_take_tcp_with_curve():
    context = zmq.Context()
    try:
        here = context.socket(zmq.DEALER)
        assert make_worker_link(here, _worker_env(socket.gethostname())) == "ipc:///tmp/x/workers.sock"
        assert here.mechanism == zmq.NULL
        there = context.socket(zmq.DEALER)
        assert make_worker_link(there, _worker_env("another-node")) == "tcp://10.0.0.1:5555"
        assert there.mechanism == zmq.CURVE
    finally:
        context.destroy(linger=0)


def test_the_server_answers_a_peer_on_the_socket_it_was_heard_on(tmp_path):
    context = zmq.Context()
    try:
        tcp = context.socket(zmq.ROUTER)
        tcp.setsockopt(zmq.ROUTER_MANDATORY, 1)
        port = tcp.bind_to_random_port("tcp://127.0.0.1")
        local = bind_local_router(context, local_sockets.address(str(tmp_path), "workers.sock"))
        peers = Peers("worker")
        peers.sock = tcp
        peers.add(local)
        client = context.socket(zmq.DEALER)
        client.setsockopt(zmq.IDENTITY, b"w1")
        client.connect(local_sockets.address(str(tmp_path), "workers.sock"))
        client.send_multipart(p.encode(p.WorkerReady(worker_id="w1", host="h", pid=1)))
        assert local.poll(5000)
        frames = local.recv_multipart()
        peers.heard(frames[0], local)
        peers.send(b"w1", p.StopWorker())
        assert client.poll(5000) and isinstance(p.decode(client.recv_multipart()), p.StopWorker)
        peers.forget(b"w1")
        assert b"w1" not in peers.route and peers.sock is tcp and port > 0
    finally:
        context.destroy(linger=0)
