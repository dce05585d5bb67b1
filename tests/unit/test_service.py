"""The server's message handling (server/service.py) with fake sockets: sessions, backlogs,
re-sync, and what it accepts from whom. No Dragon, no network."""
import errno
import json
import os
import socket
import subprocess
import time

import pytest
import zmq

from parsl_dragon.core.placement import NodeSlots, Placement
from parsl_dragon.core.scheduler import TaskScheduler
from parsl_dragon.core.spec import TaskSpec, normalize_spec
from parsl_dragon.errors import INVALID_RESOURCE_SPECIFICATION, TASK_LOST, WORKER_LOST
from parsl_dragon.server.auth import CLIENT_DOMAIN
from parsl_dragon.server.options import ServerOptions
from parsl_dragon.server.publish import publish
from parsl_dragon.server.service import Server
from parsl_dragon.server.worker_side import LISTEN_BACKLOG, bind_router
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.connection import ConnectionInfo, connection_path, read_connection, write_connection
from parsl_dragon.wire.security import ephemeral_pair

LEASE = 3.0  # heartbeat_period 1.0 x threshold 3


class FakeSocket:
    """Records what is sent; peers listed in ``unreachable`` / ``full`` refuse like a
    ROUTER_MANDATORY socket does (EHOSTUNREACH / EAGAIN)."""

    def __init__(self):
        self.sent = []
        self.unreachable = set()
        self.full = set()

    def send_multipart(self, frames, flags=0):
        identity = frames[0]
        if identity in self.unreachable:
            raise zmq.ZMQError(errno.EHOSTUNREACH)
        if identity in self.full:
            raise zmq.ZMQError(errno.EAGAIN)
        self.sent.append((identity, p.decode(frames[1:])))

    def to(self, identity, kind=None):
        return [m for i, m in self.sent if i == identity and (kind is None or isinstance(m, kind))]


class FakeBackend:
    def __init__(self):
        self.dead = []

    def hostnames(self):
        return ["n1"]

    def expected_workers(self):
        return 2

    def dead_workers(self, replace=lambda: True):
        dead, self.dead = self.dead, []
        return dead


@pytest.fixture
def server(tmp_path):
    block = tmp_path / "block"
    block.mkdir(mode=0o700)
    options = ServerOptions(connection_file=connection_path(str(block)), log_path=str(block / "server.log"),
                            server_keys=ephemeral_pair(), client_keys=[], heartbeat_period=1.0,
                            heartbeat_threshold=3)
    srv = Server(options, FakeBackend())
    srv.clients.links.sock, srv.worker_links.sock = FakeSocket(), FakeSocket()
    srv.scheduler = TaskScheduler([NodeSlots("n1", 4, 0, workers=2)])
    yield srv
    srv.rank_launches.close()
    srv.context.destroy(linger=0)


def hello(srv, identity=b"c1", owner=True):
    srv._on_frontend(identity, p.encode(p.Hello(client_id=identity.decode(), protocol=p.PROTOCOL_VERSION,
                                                parsl_version=__import__("parsl").__version__,
                                                python_version=p.PYTHON_VERSION, owner=owner)))


def worker(srv, worker_id="n1:1"):
    srv._on_backend(worker_id.encode(), p.encode(p.WorkerReady(worker_id=worker_id, host="n1", pid=1, puid=7)))


def submit(srv, *task_ids, identity=b"c1"):
    srv._on_frontend(identity, p.encode(p.SubmitTasks(tasks=[p.TaskEntry(task_id=t) for t in task_ids],
                                                      payloads=[b"payload-%d" % t for t in task_ids])))


def result(srv, server_task_id, worker_id="n1:1", payload=b"42"):
    srv._on_backend(worker_id.encode(), p.encode(p.TaskResults(
        results=[p.TaskResult(task_id=server_task_id, status=p.OK)], payloads=[payload])))


def test_a_link_without_a_session_is_told_so_with_its_own_code(server):
    server._on_frontend(b"stranger", p.encode(p.Heartbeat(sent=0.0)))
    [reply] = server.clients.links.sock.to(b"stranger")
    assert isinstance(reply, p.ErrorReply) and reply.code == p.NO_SESSION


def test_results_a_client_cannot_take_now_wait_in_order_and_heartbeats_are_not_kept(server):
    hello(server)
    worker(server)
    submit(server, 10, 11)
    server.clients.links.sock.full.add(b"c1")
    result(server, 1, payload=b"first")
    server._tick(time.monotonic())  # a heartbeat while the client's queue is full: dropped, not kept
    assert [type(m) for m in server.clients.links.waiting(b"c1")] == [p.TaskResults]
    server.clients.links.sock.full.clear()
    result(server, 2, payload=b"second")  # queued behind the backlog, not ahead of it
    assert len(server.clients.links.waiting(b"c1")) == 2
    server._flush_backlogs()
    results = server.clients.links.sock.to(b"c1", p.TaskResults)
    assert [(r.results[0].task_id, r.payloads[0]) for r in results] == [(10, b"first"), (11, b"second")]
    assert not server.clients.links.waiting(b"c1")


def test_sync_names_exactly_the_tasks_the_server_does_not_hold(server):
    hello(server)
    worker(server)
    submit(server, 10, 11)
    server.clients.links.sock.unreachable.add(b"c1")
    result(server, 1)  # task 10's result waits in the backlog: still held
    server.clients.links.sock.unreachable.clear()
    server._on_frontend(b"c1", p.encode(p.Sync(task_ids=[10, 11, 12])))
    server._flush_backlogs()
    messages = server.clients.links.sock.to(b"c1")
    assert isinstance(messages[-1], p.SyncReply) and messages[-1].unknown == [12]
    assert isinstance(messages[-2], p.TaskResults), "the backlog goes out before the reply"


def test_a_task_for_an_unreachable_worker_is_delivered_when_it_comes_back(server):
    hello(server)
    worker(server)
    server.worker_links.sock.unreachable.add(b"n1:1")
    submit(server, 10)
    assert not server.worker_links.sock.to(b"n1:1", p.SubmitTasks)
    server.worker_links.sock.unreachable.clear()
    server._flush_backlogs()
    [batch] = server.worker_links.sock.to(b"n1:1", p.SubmitTasks)
    assert batch.payloads == [b"payload-10"] and not server.worker_links.backlogs


def test_a_worker_unreachable_for_a_lease_is_lost_and_its_task_fails(server):
    hello(server)
    worker(server)
    server.worker_links.sock.unreachable.add(b"n1:1")
    submit(server, 10)
    server._check_worker_backlogs(time.monotonic() + LEASE - 1)
    assert not server.clients.links.sock.to(b"c1", p.TaskResults), "within the lease it only waits"
    server._check_worker_backlogs(time.monotonic() + LEASE + 1)
    [failed] = server.clients.links.sock.to(b"c1", p.TaskResults)
    assert failed.results[0].task_id == 10 and failed.results[0].error_type == WORKER_LOST
    assert "unreachable" in failed.results[0].error and not server.tasks


def test_a_result_from_a_worker_the_task_was_not_sent_to_is_dropped(server):
    hello(server)
    worker(server, "n1:1")
    worker(server, "n1:2")
    submit(server, 10)
    sent_to = next(i for i, m in server.worker_links.sock.sent if isinstance(m, p.SubmitTasks))
    other = "n1:2" if sent_to == b"n1:1" else "n1:1"
    result(server, 1, worker_id=other, payload=b"forged")
    assert not server.clients.links.sock.to(b"c1", p.TaskResults) and 1 in server.tasks
    result(server, 1, worker_id=sent_to.decode(), payload=b"real")
    [batch] = server.clients.links.sock.to(b"c1", p.TaskResults)
    assert batch.payloads == [b"real"]


def test_no_owner_within_the_owner_timeout_of_publishing_stops_the_server(server):
    server.options.owner_timeout_ms = 60_000
    now = time.monotonic()
    server._check_leases(now)
    assert not server._stopping, "the clock starts when the connection file is written"
    server._published = now - 59
    server._check_leases(now)
    assert not server._stopping
    server._published = now - 61
    server._check_leases(now)
    assert "no owner connected within 60s" in server._stopping and "PARSL_DRAGON_OWNER_TIMEOUT" in server._stopping


def _publish(srv, info):
    return publish(info, srv.options.connection_file, os.path.dirname(srv.options.log_path))


def _info(server_id, pid):
    return ConnectionInfo(protocol=p.PROTOCOL_VERSION, address="tcp://127.0.0.1:1", server_public_key="k",
                          host=socket.gethostname(), pid=pid, launcher_pid=None, job_id=None, block_id="0",
                          server_id=server_id, created=time.time(), log_path="/x", launch_id=server_id)


def test_a_shared_path_held_by_a_live_server_is_left_to_it(server, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    server.options.connection_file = connection_path(str(shared))
    write_connection(server.options.connection_file, _info("other", os.getpid()))
    where = _publish(server, _info("mine", os.getpid()))
    assert where == connection_path(str(tmp_path / "block"))
    assert read_connection(server.options.connection_file).server_id == "other"
    assert read_connection(where).server_id == "mine"


def test_a_shared_path_held_by_a_dead_server_is_taken_over(server, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    server.options.connection_file = connection_path(str(shared))
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    write_connection(server.options.connection_file, _info("gone", dead))
    assert _publish(server, _info("mine", os.getpid())) == server.options.connection_file
    assert read_connection(server.options.connection_file).server_id == "mine"


def test_sockets_bind_only_the_published_address(server):
    sock, port = bind_router(server.context, CLIENT_DOMAIN, server.options.server_keys.secret, "127.0.0.1")
    try:
        assert sock.getsockopt(zmq.LAST_ENDPOINT).decode() == f"tcp://127.0.0.1:{port}"
        assert sock.getsockopt(zmq.MAXMSGSIZE) == p.MAX_WIRE_FRAME_BYTES == p.MAX_FRAME_BYTES + 33
        # the kernel's accept queue (ss shows a listening socket's backlog as Send-Q): libzmq's 100 made
        # thousands of workers connecting at once wait out SYN retries
        listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
        somaxconn = int(open("/proc/sys/net/core/somaxconn").read())
        assert int(listing[2]) == min(LISTEN_BACKLOG, somaxconn) > 100, listing
    finally:
        sock.close(linger=0)


def test_a_worker_that_reconnects_is_told_which_tasks_it_should_hold(server):
    hello(server)
    worker(server)
    submit(server, 10, 11)
    result(server, 1)
    server._on_backend(b"n1:1", p.encode(p.WorkerResync(worker_id="n1:1")))
    [mark] = server.worker_links.sock.to(b"n1:1", p.ResyncMark)
    assert mark.assigned == [2], "task 10 is answered; task 11 is still out at that worker"
    server._on_backend(b"n1:1", p.encode(p.TaskResults(results=[p.TaskResult(
        task_id=2, status=p.FAILED, error_type=TASK_LOST, error="lost in flight")], payloads=[b""])))
    lost = server.clients.links.sock.to(b"c1", p.TaskResults)[-1].results[0]
    assert (lost.task_id, lost.error_type) == (11, TASK_LOST) and not server.tasks
    server._on_backend(b"stranger", p.encode(p.WorkerResync(worker_id="stranger")))
    assert not server.worker_links.sock.to(b"stranger")


# ---- resource specifications and placements

def _failed(srv, identity=b"c1"):
    return [r for batch in srv.clients.links.sock.to(identity, p.TaskResults) for r in batch.results
            if r.status == p.FAILED]


def _entries(srv, worker_id=b"n1:1"):
    return [entry for batch in srv.worker_links.sock.to(worker_id, p.SubmitTasks) for entry in batch.tasks]


def test_a_spec_refused_on_the_wire_fails_only_that_task(server):
    hello(server)
    worker(server)
    header = bytes([p.PROTOCOL_VERSION]) + json.dumps({"type": "SubmitTasks", "tasks": [
        {"task_id": 10, "spec": {"num_nodes": "x"}}, {"task_id": 11, "spec": {"cores": 2}},
        {"task_id": 12, "spec": {}}]}).encode()
    server._on_frontend(b"c1", [header, b"p10", b"p11", b"p12"])
    assert not server.clients.links.sock.to(b"c1", p.ErrorReply), "the message and the session stand"
    failed = {r.task_id: r for r in _failed(server)}
    assert sorted(failed) == [10, 11]
    assert all(r.error_type == INVALID_RESOURCE_SPECIFICATION for r in failed.values())
    assert "num_ranks" in failed[10].error and "'cores'" in failed[11].error
    [entry] = _entries(server)
    assert entry.spec == TaskSpec() and entry.placement is None
    assert server.worker_links.sock.to(b"n1:1", p.SubmitTasks)[0].payloads == [b"p12"]


def test_a_spec_too_large_for_the_block_fails_only_that_task(server):
    hello(server)
    worker(server)
    server._on_frontend(b"c1", p.encode(p.SubmitTasks(
        tasks=[p.TaskEntry(10, normalize_spec({"num_nodes": 2})), p.TaskEntry(11, TaskSpec(cpus_per_rank=5)),
               p.TaskEntry(12)], payloads=[b"p10", b"p11", b"p12"])))
    failed = {r.task_id: r for r in _failed(server)}
    assert sorted(failed) == [10, 11] and "num_nodes" in failed[10].error and "cpus_per_rank" in failed[11].error
    assert [e.task_id for e in _entries(server)] == [3] and len(server.tasks) == 1


def test_an_mpi_task_reaches_its_worker_with_spec_and_placement_and_its_ranks_use_both(server, monkeypatch):
    hello(server)
    worker(server, "n1:1")
    worker(server, "n1:2")
    spec = normalize_spec({"ranks_per_node": 2, "pmi": "none", "cpu_bind": "core", "walltime": 9})
    server._on_frontend(b"c1", p.encode(p.SubmitTasks(tasks=[p.TaskEntry(10, spec), p.TaskEntry(11)],
                                                      payloads=[b"mpi", b"serial"])))
    mpi, serial = sorted(_entries(server, b"n1:1") + _entries(server, b"n1:2"), key=lambda e: e.task_id)
    assert mpi.spec == spec and mpi.placement == Placement(1, ("n1",), ((0, 1),), ((),))
    assert serial.spec == TaskSpec() and serial.placement is None
    jobs = []
    monkeypatch.setattr(server.rank_launches, "start",
                        lambda identity, job, client_task_id, launch: jobs.append((job, launch)))
    server._on_backend(b"launcher", p.encode(p.LaunchRanks(task_id=1, argv=["a.out"], cwd="/", launch=4)))
    [(job, launch)] = jobs
    assert launch == 4
    assert (job.hosts, job.cores, job.gpus, job.ranks_per_node) == (["n1"], [[0, 1]], [[]], 2)
    assert (job.pmi, job.cpu_bind, job.walltime) == ("none", True, 9.0)
    server._on_backend(b"launcher", p.encode(p.LaunchRanks(task_id=2, argv=["a.out"], cwd="/")))
    [reply] = server.worker_links.sock.to(b"launcher", p.RanksDone)
    assert "no running MPI task 2" in reply.error and len(jobs) == 1, "a serial task has no ranks to launch"


class RankBackend(FakeBackend):
    """Launches whose ranks run until cancelled; ``cancelled`` lists the tasks whose ranks stopped."""

    def __init__(self):
        super().__init__()
        self.cancelled = []

    def run_ranks(self, job, on_started, cancel):
        on_started()
        if cancel.wait(10):
            self.cancelled.append(job.task_id)
        return p.RanksDone  # never looked at: a cancelled launch is not answered


def _mpi_task(srv, spec, client_task_id=10, identity=b"c1"):
    srv._on_frontend(identity, p.encode(p.SubmitTasks(tasks=[p.TaskEntry(client_task_id, normalize_spec(spec))],
                                                      payloads=[b"mpi"])))


def _wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_the_ranks_of_an_mpiexec_task_are_not_the_servers_to_start(server, monkeypatch):
    hello(server)
    worker(server)
    _mpi_task(server, {"num_ranks": 2, "pmi": "mpiexec"})
    monkeypatch.setattr(server.rank_launches, "start", lambda *args: pytest.fail("nothing may start"))
    server._on_backend(b"n1:1/ranks", p.encode(p.LaunchRanks(task_id=1, argv=["a.out"], cwd="/", launch=7)))
    [reply] = server.worker_links.sock.to(b"n1:1/ranks", p.RanksDone)
    assert reply.launch == 7 and reply.exit_codes == []
    assert reply.error == "ranks of pmi='mpiexec' tasks are started by mpiexec itself, not by the server"


@pytest.mark.parametrize("ending", ["result", "worker lost", "client gone"])
def test_ranks_do_not_outlive_their_task(server, ending):
    server.backend = RankBackend()
    server.rank_launches.backend = server.backend
    hello(server)
    worker(server)
    _mpi_task(server, {"num_ranks": 2, "pmi": "none"})
    server._on_backend(b"n1:1/ranks", p.encode(p.LaunchRanks(task_id=1, argv=["a.out"], cwd="/", launch=3)))
    assert server.rank_launches.running() == 1
    if ending == "result":
        result(server, 1)
    elif ending == "worker lost":
        server._on_worker_lost("n1:1", "test")
    else:
        server._drop_client(b"c1")
    assert _wait_for(lambda: server.backend.cancelled == [1]), "the launch's ranks were stopped"
    assert server.rank_launches.running() == 0
    time.sleep(0.05)
    assert server.rank_launches.finished() == []
    replies = server.worker_links.sock.to(b"n1:1/ranks", p.RanksDone)
    if ending == "client gone":  # the task still runs on its worker, which waits for an answer
        [reply] = replies
        assert reply.launch == 3 and "client is gone" in reply.error
    else:
        assert replies == [], "nobody waits for an answer any more"


def test_a_retiring_worker_delivers_its_result_gets_no_new_task_and_its_exit_is_no_loss(server):
    hello(server)
    worker(server, "n1:1")
    submit(server, 1, 2)
    [first] = server.worker_links.sock.to(b"n1:1", p.SubmitTasks)
    server._on_backend(b"n1:1", p.encode(p.TaskResults(
        results=[p.TaskResult(task_id=first.tasks[0].task_id, status=p.OK)], payloads=[b"42"], retiring=True)))
    [results] = server.clients.links.sock.to(b"c1", p.TaskResults)
    assert [r.task_id for r in results.results] == [1], "the result reaches its client"
    assert server.worker_links.sock.to(b"n1:1", p.SubmitTasks) == [first], "no second task for a retiring worker"
    server.backend.dead = [(7, 0)]  # it exits, as it said it would
    server._check_workers()
    assert server.clients.links.sock.to(b"c1", p.TaskResults) == [results], "nothing failed as lost"
    worker(server, "n1:2")  # the backend's replacement
    [second] = server.worker_links.sock.to(b"n1:2", p.SubmitTasks)
    assert second.tasks[0].task_id != first.tasks[0].task_id, "the waiting task goes to the new worker"


def test_a_client_announcing_a_large_message_is_not_dropped_while_it_arrives(server):
    hello(server)
    server._on_frontend(b"c1", p.encode(p.Incoming(nbytes=1 << 30)))
    later = time.monotonic() + LEASE + 5
    assert server.clients.silent(later, LEASE) == [], "a 1 GiB message may take 100 s at 10 MiB/s"
    assert server.clients.silent(time.monotonic() + 200, LEASE) != [], "but not forever"


def _release(srv, server_task_id, worker_id="n1:1"):
    srv._on_backend(worker_id.encode(), p.encode(p.TaskResults(results=[], released=[server_task_id])))


def test_a_released_slot_takes_the_next_task_and_the_result_still_reaches_its_client(server):
    hello(server)
    worker(server)  # one worker: the second task waits for it
    submit(server, 10, 11)
    assert [e.task_id for e in _entries(server)] == [1]
    _release(server, 1, worker_id="n1:2")  # not that worker's task: no effect
    assert [e.task_id for e in _entries(server)] == [1]
    _release(server, 1)
    assert [e.task_id for e in _entries(server)] == [1, 2], "the next task goes out while the result is kept"
    assert not server.clients.links.sock.to(b"c1", p.TaskResults)
    result(server, 1)
    result(server, 2)
    delivered = [r.task_id for batch in server.clients.links.sock.to(b"c1", p.TaskResults) for r in batch.results]
    assert delivered == [10, 11] and not server.tasks


def test_a_worker_lost_after_releasing_fails_both_its_tasks(server):
    hello(server)
    worker(server)
    submit(server, 10, 11)
    _release(server, 1)
    server._on_worker_lost("n1:1", "it died")
    assert sorted(r.task_id for r in _failed(server)) == [10, 11]
    assert all(r.error_type == WORKER_LOST for r in _failed(server)) and not server.tasks
