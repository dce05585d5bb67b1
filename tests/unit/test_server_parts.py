"""The service's parts on their own: the worker side (server/worker_side.py), per-peer backlogs
(server/links.py), the task book (server/taskbook.py) and client sessions (server/clients.py).
No Dragon, no network beyond loopback."""
import errno
import time

import parsl
import pytest
import zmq

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.scheduler import Assignment
from parsl_dragon.core.spec import TaskSpec, normalize_spec
from parsl_dragon.server.clients import Clients
from parsl_dragon.server.links import Peers
from parsl_dragon.server.main import start_server
from parsl_dragon.server.options import ServerOptions
from parsl_dragon.server.taskbook import Task, TaskBook
from parsl_dragon.server.worker_side import WorkerSide, worker_environment
from parsl_dragon.vocabulary import WORKER_LINK_VARS
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.security import ephemeral_pair


class RefusingSocket:
    """Refuses peers in ``down`` like a ROUTER_MANDATORY socket (EHOSTUNREACH); records the rest."""

    def __init__(self):
        self.down = set()
        self.sent = []

    def send_multipart(self, frames, flags=0):
        if frames[0] in self.down:
            raise zmq.ZMQError(errno.EHOSTUNREACH)
        self.sent.append((frames[0], p.decode(frames[1:])))


@pytest.fixture
def peers():
    links = Peers("worker")
    links.sock = RefusingSocket()
    return links


def beat(n):
    return p.Heartbeat(sent=float(n))


# ---- links: nothing dropped in silence

def test_what_a_peer_cannot_take_waits_in_order_and_goes_out_first(peers):
    peers.sock.down.add(b"w")
    peers.send(b"w", beat(1))
    peers.send(b"w", beat(2))
    peers.sock.down.clear()
    peers.send(b"w", beat(3))  # behind the backlog, not ahead of it
    assert not peers.sock.sent and [m.sent for m in peers.waiting(b"w")] == [1.0, 2.0, 3.0]
    peers.flush()
    assert [m.sent for _, m in peers.sock.sent] == [1.0, 2.0, 3.0] and not peers.backlogs


def test_a_message_not_kept_is_dropped_when_refused_and_does_not_queue(peers):
    peers.sock.down.add(b"w")
    peers.send(b"w", beat(1), keep=False)
    assert not peers.backlogs and peers.waiting(b"w") == ()


def test_other_errors_are_not_taken_for_a_busy_peer(peers):
    def broken(frames, flags=0):
        raise zmq.ZMQError(errno.ENOTSOCK)
    peers.sock.send_multipart = broken
    with pytest.raises(zmq.ZMQError):
        peers.send(b"w", beat(1))


def test_backlogs_older_than_the_lease_are_handed_back_once(peers):
    peers.sock.down.update({b"old", b"new"})
    peers.send(b"old", beat(1))
    peers.backlogs[b"old"].since -= 10
    peers.send(b"new", beat(2))
    late = peers.overdue(time.monotonic(), lease=5)
    assert [identity for identity, _ in late] == [b"old"] and len(late[0][1].messages) == 1
    assert peers.overdue(time.monotonic(), lease=5) == [] and list(peers.backlogs) == [b"new"]
    peers.forget(b"new")
    assert not peers.backlogs


def test_the_worker_environment_carries_every_worker_link_variable():
    keys = ephemeral_pair()
    env = worker_environment("tcp://10.0.0.1:5", keys.secret, "srv", None)
    assert set(WORKER_LINK_VARS) <= set(env) and env["PARSL_WORKER_BLOCK_ID"] == ""
    assert zmq.curve_public(env["PARSL_DRAGON_WORKER_SECRET"].encode()) == keys.public


# ---- the worker side: up before the service is imported

class RecordingBackend:
    """Records start_workers and stop; ``fail`` makes start_workers raise."""

    def __init__(self, fail=False):
        self.fail, self.started, self.stopped = fail, [], False

    def start_workers(self, address, env, cwd):
        if self.fail:
            raise RuntimeError("no room on the node")
        self.started.append((address, env, cwd))
        return 2

    def hostnames(self):
        return ["n1"]

    def stop(self, patience):
        self.stopped = True


def side_options(tmp_path):
    return ServerOptions(connection_file=str(tmp_path / "c.json"), log_path=str(tmp_path / "s.log"),
                         server_keys=ephemeral_pair(), client_keys=[], host_address="127.0.0.1", cwd="/w")


def test_the_worker_side_starts_workers_once_and_the_server_adopts_it(tmp_path):
    from parsl_dragon.server.service import Server
    backend, side = RecordingBackend(), WorkerSide()
    try:
        side.start(side_options(tmp_path), backend)
        side.start(side_options(tmp_path), backend)
        [(address, env, cwd)] = backend.started
        assert address == side.address == side.sock.getsockopt(zmq.LAST_ENDPOINT).decode() and cwd == "/w"
        assert env["PARSL_DRAGON_WORKER_ADDRESS"] == address and env["PARSL_WORKER_POOL_ID"] == side.server_id
        assert side.workers == 2 and side.sock.getsockopt(zmq.MAXMSGSIZE) == p.MAX_WIRE_FRAME_BYTES
        server = Server(side_options(tmp_path), backend, side)
        assert server.server_id == side.server_id and server.context is side.context
    finally:
        side.close()


def test_workers_started_for_a_service_that_cannot_be_built_are_stopped(tmp_path):
    backend = RecordingBackend(fail=True)
    assert start_server(side_options(tmp_path), backend) is None and backend.stopped


# ---- the task book

def book_with(*tasks):
    book = TaskBook()
    for client, client_task_id in tasks:
        book.add(book.next_id(), Task(client, client_task_id, TaskSpec(), b"payload-%d" % client_task_id))
    return book


def test_batches_record_where_each_task_went_and_let_go_of_its_payload():
    book = book_with((b"c1", 10), (b"c1", 11))
    placement = Placement(2, ("n1",), ((0, 1),), ((),))
    batches = book.batches([Assignment("w1", 1), Assignment("w2", 2, placement), Assignment("w1", 99)])
    assert sorted(batches) == ["w1", "w2"]
    assert [e.task_id for e in batches["w1"].tasks] == [1] and batches["w1"].payloads == [b"payload-10"]
    assert batches["w2"].tasks[0].placement == placement
    assert (book.get(1).worker, book.get(1).payload, book.get(2).placement) == ("w1", b"", placement)
    assert book.sent_to("w1") == [1] and book.sent_to("w2") == [2]


def test_results_are_taken_only_from_the_worker_the_task_went_to_and_renumbered():
    book = book_with((b"c1", 10), (b"c2", 20), (b"gone", 30))
    book.batches([Assignment("w1", 1), Assignment("w1", 2), Assignment("w1", 3)])
    forged = book.route("w2", p.TaskResults(results=[p.TaskResult(task_id=1, status=p.OK)], payloads=[b"x"]),
                        [b"c1", b"c2"])
    assert forged.to_clients == {} and forged.finished == [] and 1 in book
    results = p.TaskResults(results=[p.TaskResult(task_id=i, status=p.OK) for i in (1, 2, 3, 77)],
                            payloads=[b"r1", b"r2", b"r3", b"r77"])
    routed = book.route("w1", results, [b"c1", b"c2"])
    assert [r.task_id for r in routed.to_clients[b"c1"].results] == [10]
    assert routed.to_clients[b"c2"].payloads == [b"r2"]
    assert routed.finished == [1, 2, 3, 77] and routed.unroutable == [3, 77] and len(book) == 0


def test_tasks_taken_for_failure_are_grouped_by_client():
    book = book_with((b"c1", 10), (b"c2", 20), (b"c1", 11))
    assert book.client_task_ids(b"c1") == {10, 11} and book.of_client(b"c2") == [2]
    assert book.take_by_client([1, 2, 42]) == {b"c1": [10], b"c2": [20]}
    assert book.take_all() == {b"c1": [11]} and len(book) == 0
    assert book.next_id() == 4, "ids are never reused"


# ---- client sessions

def hello(client_id, owner):
    return p.Hello(client_id=client_id, protocol=p.PROTOCOL_VERSION, parsl_version=parsl.__version__,
                   python_version=p.PYTHON_VERSION, owner=owner)


def test_a_second_hello_keeps_the_session_and_its_backlog():
    clients = Clients()
    clients.links.sock = RefusingSocket()
    clients.open(b"c1", hello("c1", owner=False))
    clients.links.sock.down.add(b"c1")
    clients.send(b"c1", p.TaskResults(results=[p.TaskResult(task_id=7, status=p.OK)], payloads=[b""]))
    clients.open(b"c1", hello("c1", owner=False))
    assert clients.results_waiting(b"c1") == {7} and len(clients) == 1 and not clients.owner_seen


def test_a_link_without_a_session_gets_nothing_kept():
    clients = Clients()
    clients.links.sock = RefusingSocket()
    clients.links.sock.down.add(b"stranger")
    clients.send(b"stranger", p.ErrorReply(reason="no session"))
    assert clients.links.waiting(b"stranger") == ()


def test_silent_sessions_and_owners():
    clients = Clients()
    clients.open(b"a", hello("a", owner=True))
    clients.open(b"b", hello("b", owner=False))
    clients.get(b"a").last_seen -= 100
    assert [s.client_id for s in clients.silent(time.monotonic(), lease=10)] == ["a"]
    assert [s.client_id for s in clients.owners()] == ["a"] and clients.owner_seen
    clients.close(b"a")
    assert b"a" not in clients and clients.owners() == []


def test_an_mpi_spec_survives_the_book_unchanged():
    spec = normalize_spec({"num_nodes": 1, "ranks_per_node": 2})
    book = TaskBook()
    book.add(book.next_id(), Task(b"c1", 5, spec, b"p"))
    [entry] = book.batches([Assignment("w", 1, Placement(1, ("n1",), ((0, 1),), ((),)))])["w"].tasks
    decoded = p.decode(p.encode(p.SubmitTasks(tasks=[entry], payloads=[b"p"])))
    assert entry.spec is spec and decoded.tasks[0].spec == spec
