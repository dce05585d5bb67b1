"""The benchmark seam (server/simulated.py, ``--simulated-nodes``): the real server over made-up
nodes, whose workers are links a test (or benchmarks/scale.py) opens itself. No Dragon: the
simulated backend never imports it, so the server runs here as a plain process."""
import json
import os
import stat
import subprocess
import sys
import threading
import time

import zmq

from parsl_dragon.driver.client import DragonClient
from parsl_dragon.server.simulated import LINK_FILE, RANKS_REFUSED, SimulatedBackend, hostnames
from parsl_dragon.vocabulary import ENV_SERVER_ID, WORKER_LINK_VARS
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire import security
from parsl_dragon.wire.connection import connection_path, read_connection


def test_simulated_nodes_workers_and_link_file(tmp_path):
    backend = SimulatedBackend(3, str(tmp_path), cores=8, workers_per_node=4)
    assert backend.hostnames() == hostnames(3) == ["simnode-00000", "simnode-00001", "simnode-00002"]
    assert [(n.cpus, n.gpus) for n in backend.nodes()] == [(8, 0)] * 3
    env = {name: f"value of {name}" for name in (*WORKER_LINK_VARS, ENV_SERVER_ID)}
    assert backend.start_workers("tcp://127.0.0.1:1", dict(env, PATH="/bin"), str(tmp_path)) == 12
    assert backend.expected_workers() == 12 and backend.dead_workers() == []
    path = tmp_path / LINK_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    link = json.loads(path.read_text())
    assert link["env"] == env and link["nodes"] == hostnames(3) and link["workers_per_node"] == 4
    assert backend.run_ranks(None).error == RANKS_REFUSED
    assert SimulatedBackend(1, str(tmp_path), cores=8).workers_per_node == 7  # cores - 1, as Dragon's


def test_the_real_server_serves_simulated_workers_over_curve(tmp_path):
    keys_dir = tmp_path / "keys"
    security.load_pair(str(keys_dir), security.SERVER)
    client_keys = security.load_pair(str(keys_dir), security.CLIENT)
    block = tmp_path / "block"
    block.mkdir(mode=0o700)
    server = subprocess.Popen(
        [sys.executable, "-m", "parsl_dragon.server.main", "--connection-file", connection_path(str(block)),
         "--log-file", str(block / "server.log"), "--key-dir", str(keys_dir), "--simulated-nodes", "2",
         "--workers-per-node", "1", "--cores-per-node", "1"], env=dict(os.environ, PARSL_DRAGON_LOCAL_LINKS="0"))
    context = zmq.Context()
    results, arrived = [], threading.Event()
    client = DragonClient(client_keys, timeout_s=10.0, heartbeat_period=1.0, heartbeat_threshold=5,
                          on_results=lambda sid, m: (results.extend(m.results), arrived.set()),
                          on_monitoring=lambda m: None, on_server_lost=lambda sid, why: None)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(connection_path(str(block))) and time.monotonic() < deadline:
            assert server.poll() is None, (block / "server.log").read_text()
            time.sleep(0.05)
        link = json.loads((block / LINK_FILE).read_text())
        worker = context.socket(zmq.DEALER)
        worker.setsockopt(zmq.IDENTITY, b"simnode-00001:1")
        worker.setsockopt(zmq.LINGER, 0)
        address = security.make_worker_link(worker, link["env"])
        assert address.startswith("tcp://") and worker.get(zmq.MECHANISM) == zmq.CURVE  # not the same-host socket
        worker.connect(address)
        worker.send_multipart(p.encode(p.WorkerReady(worker_id="simnode-00001:1", host="simnode-00001", pid=1)))
        client.start()
        server_id = client.connect(read_connection(connection_path(str(block))), owner=True).server_id
        assert server_id == link["env"][ENV_SERVER_ID]
        client.send_task(server_id, p.TaskEntry(task_id=7), b"payload")
        assert worker.poll(10_000), "the server dispatched nothing to the simulated worker"
        task = p.decode(worker.recv_multipart())
        assert isinstance(task, p.SubmitTasks) and task.payloads == [b"payload"]
        worker.send_multipart(p.encode(p.TaskResults(
            results=[p.TaskResult(task_id=task.tasks[0].task_id, status=p.OK, host="simnode-00001")],
            payloads=[b"done"])))
        assert arrived.wait(10)
        assert [(r.task_id, r.status) for r in results] == [(7, p.OK)]
        client.disconnect(server_id, p.Shutdown(reason="test over"))
        assert server.wait(timeout=20) == 0
        assert "Simulated backend: 2 nodes x 1 workers" in (block / "server.log").read_text()
    finally:
        client.close()
        context.destroy(linger=0)
        if server.poll() is None:
            server.kill()
            server.wait()
