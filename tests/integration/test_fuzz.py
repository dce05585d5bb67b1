"""Hostile input at a live server's sockets: seeded-random frames, then a normal task still works.

One server is started through a real DFK (``server_path``); the test then opens its own
CURVE-authenticated DEALERs next to the DFK's session and sends:

* frames before ``Hello`` (including a valid ``Shutdown``, which must not be obeyed);
* ``FUZZ_FRAMES`` (>= 10,000) seeded-random frames on one client session: random bytes,
  truncated headers, wrong version bytes, unknown types, JSON that is not a typed message,
  every message type with one field of the wrong JSON type, payload-count mismatches,
  over-deep JSON, messages only servers or workers send, refused versions, unknown extra
  fields, heartbeats, and small ``SubmitTasks`` batches of garbage payloads with duplicate
  task ids and hostile resource specifications;
* ``WORKER_FRAMES`` frames on the worker link, with the worker key read from inside a task:
  garbage, wrong types, results for unknown task ids, ``WorkerReady`` for unknown hosts,
  ``LaunchRanks`` for unknown tasks, messages only a server sends;
* one ``SubmitTasks`` of ``HUGE_BATCH`` (20,000) tasks whose payloads are not Parsl packages;
* a header over ``MAX_HEADER_BYTES`` and a frame over the server's ``MAXMSGSIZE`` (1 GiB).

While the server works through the random frames and the huge batch, a newcomer (a fresh
CURVE connection in its own ZeroMQ context) says ``Hello`` every ``PROBE_EVERY`` seconds: its
handshake (ZAP included) and ``Welcome`` must come within ``HANDSHAKE_BOUND``, and the server's
heartbeats to the fuzzing sessions may never pause for more than ``HEARTBEAT_GAP_BOUND`` (by
their ``sent`` stamps). A busy server must not starve new connections or leases.

The frame over ``MAXMSGSIZE`` is only its header: a TCP relay (:class:`Relay`) cuts the 9
bytes a real frame of 1 GiB + 1 bytes starts with on the wire into an authenticated connection
right after its ``Hello``. libzmq checks a frame's size in its header, before reading or
decrypting the body, so the server sees what it sees from a peer sending the whole frame,
while the test neither encrypts 1 GiB nor holds 3 GB for it: that took 10-20 s of the test's
own CPU on the 2-core machine (far longer on a loaded one), the server's part well under a
second. ``PARSL_DRAGON_FUZZ_REAL_FRAME=1`` sends the real frame instead.

Every rejected frame must get exactly one ``ErrorReply`` and one log line, every garbage
task exactly one failure result (status ``exception`` or ``failed``, never ``ok``), the
oversized frame must cost only its own connection (and the peer's reconnect be answered
within ``HANDSHAKE_BOUND``); afterwards the server process is alive,
its RSS stayed within ``RSS_SLACK_MB`` of the start, the worker process was never replaced,
and a normal python_app returns its result. Seeds and sizes can be changed through
``PARSL_DRAGON_FUZZ_SEED`` / ``_FRAMES`` / ``_BATCH``.

Not sent on purpose: a *valid* ``Shutdown`` or ``Goodbye`` or an owner ``Hello`` on a live
session, and valid results or ``WorkerReady`` for real task ids / hosts. Every holder of the
client key may stop the server (that is how ``parsl-dragon teardown`` works), and the
worker link is the server's own (an ephemeral key only its workers receive): both are
trusted peers, not hostile input.
"""
import collections
import json
import os
import random
import re
import socket
import threading
import time

import parsl
import pytest
import zmq
from parsl import python_app
from parsl.serialize import deserialize
from zmq.utils.monitor import recv_monitor_message

from parsl_dragon.wire import protocol as p
from parsl_dragon.wire import security
from parsl_dragon.wire.connection import connection_path, read_connection

SEED = int(os.environ.get("PARSL_DRAGON_FUZZ_SEED", "20261124"))
FUZZ_FRAMES = int(os.environ.get("PARSL_DRAGON_FUZZ_FRAMES", "10000"))
WORKER_FRAMES = 2000
HUGE_BATCH = int(os.environ.get("PARSL_DRAGON_FUZZ_BATCH", "20000"))
RSS_SLACK_MB = 200
LEASE = (1.0, 10)  # heartbeat period (s), threshold: lenient, the machine may be busy; leases are not tested here
HEARTBEAT_EVERY = 0.5
# Liveness while busy. Measured on the 2-core machine with two CPU burners beside it: newcomer
# handshake + Welcome <= 0.7 s, heartbeat gaps <= 1.5 s, even with the service loop saturated.
HANDSHAKE_BOUND = 10.0  # s: a new connection's CURVE/ZAP handshake and Hello -> Welcome
HEARTBEAT_GAP_BOUND = LEASE[0] * LEASE[1] / 2  # s between two server heartbeats: half a lease
PROBE_EVERY = 2.0  # s between newcomers
REAL_FRAME = os.environ.get("PARSL_DRAGON_FUZZ_REAL_FRAME") == "1"

REJECTED, REFUSED, TASKS, SILENT = "rejected", "refused", "tasks", "silent"


@python_app
def square(x):
    return x * x


@python_app
def worker_link_and_pid():
    import os
    keys = ("PARSL_DRAGON_WORKER_ADDRESS", "PARSL_DRAGON_WORKER_SECRET", "PARSL_DRAGON_WORKER_SERVER_KEY")
    return {k: os.environ[k] for k in keys}, os.getpid()


def _rss_mb(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _header(body, version=p.PROTOCOL_VERSION):
    return bytes([version]) + json.dumps(body).encode()


# ---------------------------------------------------------------- peers

class Peer:
    """One DEALER with CURVE keys; counts what comes back, by message type."""

    def __init__(self, context, address, secret, server_public, identity=None, sessions=()):
        self.sessions = list(sessions)  # peers whose client sessions wait_for keeps alive
        self.beats = []  # the server's heartbeats: their ``sent`` stamps
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)  # never make the server drop replies because we were slow
        if identity:
            self.socket.setsockopt(zmq.ROUTING_ID, identity)
        security.make_curve_client(self.socket, secret, server_public)
        self.socket.connect(address)
        self.replies = collections.Counter()
        self.results = collections.Counter()  # client task id -> results received
        self.statuses = collections.Counter()
        self.reasons = collections.Counter()
        self.sample_exception = None
        self._beat = 0.0

    def send(self, frames):
        self.socket.send_multipart(frames, copy=False)
        self.drain()

    def drain(self, wait_ms=0):
        while self.socket.poll(wait_ms, zmq.POLLIN):
            wait_ms = 0
            message = p.decode(self.socket.recv_multipart())
            self.replies[type(message).__name__] += 1
            if isinstance(message, p.TaskResults):
                for result, payload in zip(message.results, message.payloads):
                    self.results[result.task_id] += 1
                    self.statuses[result.status] += 1
                    if result.status == p.EXCEPTION and self.sample_exception is None:
                        self.sample_exception = payload
            elif isinstance(message, p.ErrorReply):
                self.reasons[message.reason[:120]] += 1
            elif isinstance(message, p.Heartbeat):
                self.beats.append(message.sent)
            self.last = message

    def reason_count(self, prefix):
        return sum(n for reason, n in self.reasons.items() if reason.startswith(prefix))

    def hello(self, timeout=30.0):
        self.socket.send_multipart(p.encode(p.Hello(
            client_id=f"fuzz-{id(self):x}", protocol=p.PROTOCOL_VERSION, parsl_version=parsl.__version__,
            python_version=p.PYTHON_VERSION, owner=False)))
        welcomes = self.replies["Welcome"]
        self.wait_for(lambda: self.replies["Welcome"] > welcomes, timeout, f"a Welcome within {timeout}s")
        return self.last

    def keep_alive(self):
        now = time.monotonic()
        if now - self._beat > HEARTBEAT_EVERY:
            self._beat = now
            self.socket.send_multipart(p.encode(p.Heartbeat(sent=time.time())))

    def wait_for(self, done, timeout, what, tick=lambda: None):
        """Drain until ``done()``, keeping ``sessions`` alive and calling ``tick()`` each round."""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
            for peer in self.sessions:
                peer.keep_alive()
                peer.drain()
            tick()
            self.drain(50)

    def close(self):
        self.socket.close(linger=0)


class Relay:
    """A TCP relay in front of the server that can cut a forged frame header into the newest
    connection: the stand-in for a peer that sends a frame over the server's ``MAXMSGSIZE``."""

    def __init__(self, target):
        host, port = target[len("tcp://"):].rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.address = "tcp://127.0.0.1:%d" % self.listener.getsockname()[1]
        self.lock = threading.Lock()  # a chunk is relayed whole, never interleaved with a forged header
        self.newest = None  # (client side, server side) of the newest connection
        self.muted = set()  # client sides whose bytes are no longer relayed
        self.accepted = 0
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, name="fuzz-relay", daemon=True).start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            server = socket.create_connection(self.target)
            with self.lock:
                self.newest = (client, server)
                self.accepted += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()
        self.listener.close()

    def _pump(self, source, sink):
        """Relay one direction; when either side ends, end both (the peer sees its link drop)."""
        try:
            while data := source.recv(1 << 16):
                with self.lock:
                    if source not in self.muted:
                        sink.sendall(data)
        except OSError:
            pass
        for side in (source, sink):
            try:
                side.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        source.close()

    def cut_in(self, data):
        """Send ``data`` to the server on the newest connection; relay nothing more from its client."""
        with self.lock:
            client, server = self.newest
            self.muted.add(client)
            server.sendall(data)

    def stop(self):
        self.stopping.set()


# ---------------------------------------------------------------- frame factory

def _wrong_value(rng, expected):
    """A JSON value whose type is not ``expected`` (the field's annotated type)."""
    candidates = {
        int: lambda: rng.randint(-2**70, 2**70), float: lambda: rng.random() * 1e6,
        str: lambda: "".join(rng.choice("ab\u00e9\U0001F600 {}[]\"") for _ in range(rng.randrange(8))),
        bool: lambda: rng.random() < 0.5, type(None): lambda: None,
        list: lambda: [rng.randrange(5) for _ in range(rng.randrange(3))],
        dict: lambda: {"k": rng.randrange(5)},
    }
    allowed = expected if isinstance(expected, tuple) else (expected,)  # as protocol._field_types says
    return candidates[rng.choice([t for t in candidates if t not in allowed])]()


HOSTILE_SPECS = [{}, {}, {}, {"priority": 10**400}, {"priority": "x"}, {"cpus_per_rank": 10**6},
                 {"num_nodes": 99}, {"num_nodes": "x"}, {"gpus_per_rank": 3}, {"cpu_bind": "maybe"},
                 {"walltime": 5}, {"unknown_key": [1, 2]}, {"priority": -5, "cpus_per_rank": 1}]


class Frames:
    """Seeded generator of (expected outcome, frames) for the client link."""

    def __init__(self, rng):
        self.rng = rng
        self.kinds = collections.Counter()

    def templates(self):
        """A valid body of every message type (and its payload count); sampled for mutations."""
        return {
            "Hello": ({"client_id": "fuzz", "protocol": p.PROTOCOL_VERSION, "parsl_version": parsl.__version__,
                       "python_version": p.PYTHON_VERSION, "owner": False}, 0),
            "Welcome": ({"server_id": "s", "host": "h", "parsl_version": "1", "python_version": "3.11",
                         "nodes": ["h"], "workers": 1}, 0),
            "Refused": ({"reason": "r"}, 0),
            "SubmitTasks": ({"tasks": [{"task_id": 1, "spec": {}}]}, 1),
            "TaskResults": ({"results": [{"task_id": 1, "status": "ok"}]}, 1),
            "Heartbeat": ({"sent": 1732435200.25}, 0),
            "Shutdown": ({"reason": "fuzz"}, 0),
            "ErrorReply": ({"reason": "r"}, 0),
            "WorkerReady": ({"worker_id": "w", "host": "fuzz-host", "pid": 1, "puid": 2}, 0),
            "LaunchRanks": ({"task_id": 10**9, "argv": ["true"], "cwd": "/"}, 0),
            "RanksDone": ({"task_id": 1, "exit_codes": [0], "labels": ["r0"]}, 0),
        }

    def make(self):
        kind = self.rng.choices(list(self.GENERATORS), weights=[w for w, _ in self.GENERATORS.values()])[0]
        self.kinds[kind] += 1
        return self.GENERATORS[kind][1](self)

    # each returns (outcome, frames[, task ids])
    def random_bytes(self):
        return REJECTED, [self.rng.randbytes(self.rng.randrange(0, 300)) for _ in range(self.rng.randrange(1, 4))]

    def truncated(self):
        name = self.rng.choice(["Hello", "SubmitTasks", "Heartbeat", "TaskResults"])
        body, n = self.templates()[name]
        header = _header(dict(body, type=name))
        return REJECTED, [header[:self.rng.randrange(1, len(header) - 1)]] + [b"x"] * n

    def wrong_version(self):
        version = self.rng.choice([v for v in range(256) if v != p.PROTOCOL_VERSION])
        return REJECTED, [_header({"type": "Heartbeat", "sent": 1.0}, version=version)]

    def unknown_type(self):
        name = self.rng.choice(["Bogus", "hello", "Message", "TaskEntry", "TaskResult", "", "x" * 10_000])
        return REJECTED, [_header({"type": name + ("" if self.rng.random() < 0.5 else str(self.rng.random()))})]

    def not_a_message(self):
        body = self.rng.choice([[], [1, 2], "Heartbeat", 42, None, {}, {"type": None}, {"type": 7},
                                {"type": ["Heartbeat"]}, {"reason": "no type"}])
        return REJECTED, [_header(body)]

    def wrong_types(self):
        templates = self.templates()
        name = self.rng.choice(sorted(templates))
        body, n = templates[name]
        body = json.loads(json.dumps(body))
        types = p._field_types(p.Message.registry[name])
        if name == "SubmitTasks" and self.rng.random() < 0.6:
            entry = body["tasks"][0]
            key = self.rng.choice(["task_id", "spec", "placement", "tasks"])
            if key == "tasks":
                body["tasks"] = self.rng.choice(["tasks", 3, {"task_id": 1}, [1], [None]])
            else:
                entry[key] = _wrong_value(self.rng, p._field_types(p.TaskEntry)[key])
        else:
            key = self.rng.choice(sorted(types))
            body[key] = _wrong_value(self.rng, types[key])
        return REJECTED, [_header(dict(body, type=name))] + [b"payload"] * n

    def payload_mismatch(self):
        name = self.rng.choice(["SubmitTasks", "TaskResults", "Heartbeat", "Goodbye", "Shutdown"])
        entries = self.rng.randrange(0, 4)
        if name == "SubmitTasks":
            body = {"tasks": [{"task_id": i} for i in range(entries)]}
        elif name == "TaskResults":
            body = {"results": [{"task_id": i, "status": "ok"} for i in range(entries)]}
        else:
            body, entries = {}, 0
        payloads = self.rng.choice([n for n in range(6) if n != entries])
        return REJECTED, [_header(dict(body, type=name))] + [b"p"] * payloads

    def deep_json(self):
        depth = self.rng.choice([100_000, 500_000])
        return REJECTED, [bytes([p.PROTOCOL_VERSION]) + b"[" * depth + b"]" * depth]

    def server_or_worker_message(self):
        name = self.rng.choice(["Welcome", "Refused", "TaskResults", "ErrorReply", "WorkerReady",
                                "StopWorker", "LaunchRanks", "RanksDone", "Monitoring"])
        body, n = self.templates().get(name, ({}, 0))
        return REJECTED, [_header(dict(body, type=name))] + [b"payload"] * n

    def refused_hello(self):
        body = dict(self.templates()["Hello"][0], type="Hello")
        key = self.rng.choice(["protocol", "parsl_version", "python_version"])
        body[key] = {"protocol": p.PROTOCOL_VERSION + 1, "parsl_version": "1999.1.1", "python_version": "2.7"}[key]
        return REFUSED, [_header(body)]

    def unknown_fields(self):
        extra = {f"future_{i}": i for i in range(self.rng.choice([1, 5, 10_000]))}
        return SILENT, [_header(dict(extra, type="Heartbeat", sent=time.time()))]

    def heartbeat(self):
        return SILENT, p.encode(p.Heartbeat(sent=time.time()))

    def garbage_tasks(self):
        ids = [self.rng.randint(1, 40) for _ in range(self.rng.randrange(1, 6))]  # duplicates on purpose
        tasks = [{"task_id": i, "spec": self.rng.choice(HOSTILE_SPECS)} for i in ids]
        payloads = [self.rng.randbytes(self.rng.randrange(0, 64)) for _ in ids]
        return TASKS, [_header({"type": "SubmitTasks", "tasks": tasks})] + payloads, ids

    GENERATORS = {  # kind: (weight, generator)
        "random_bytes": (20, random_bytes), "truncated": (8, truncated), "wrong_version": (6, wrong_version),
        "unknown_type": (6, unknown_type), "not_a_message": (5, not_a_message), "wrong_types": (25, wrong_types),
        "payload_mismatch": (8, payload_mismatch), "deep_json": (1, deep_json),
        "server_or_worker_message": (6, server_or_worker_message), "refused_hello": (3, refused_hello),
        "unknown_fields": (3, unknown_fields), "heartbeat": (3, heartbeat), "garbage_tasks": (6, garbage_tasks),
    }


def worker_link_frames(rng, count):
    """(expects a RanksDone reply, frames) for the worker link."""
    frames = Frames(rng)
    for i in range(count):
        choice = rng.randrange(8)
        if choice == 0:
            yield False, frames.random_bytes()[1]
        elif choice == 1:
            yield False, frames.wrong_types()[1]
        elif choice == 2:  # results for task ids nobody gave out (ints far above any real id)
            ids = [10**9 + rng.randrange(10**6) for _ in range(rng.randrange(1, 5))]
            yield False, p.encode(p.TaskResults(results=[p.TaskResult(task_id=t, status=p.OK) for t in ids],
                                                payloads=[b"x"] * len(ids)))
        elif choice == 3:
            yield False, p.encode(p.WorkerReady(worker_id=f"w{i}", host=f"fuzz-host-{i}", pid=i, puid=-i))
        elif choice == 4:
            yield True, p.encode(p.LaunchRanks(task_id=10**9 + i, argv=["true"], cwd="/"))
        elif choice == 5:
            yield False, p.encode(rng.choice([p.StopWorker(), p.Goodbye(), p.Welcome(
                server_id="s", host="h", parsl_version="1", python_version="3", nodes=[], workers=0)]))
        elif choice == 6:
            yield False, frames.truncated()[1]
        else:
            yield False, frames.unknown_type()[1]


# ---------------------------------------------------------------- the test

@pytest.fixture
def server(load_dfk, tmp_path):
    """A live server (through a real DFK) and what the test needs to attack it."""
    server_dir = str(tmp_path / "server")
    load_dfk(server_path=server_dir, heartbeat_period=LEASE[0], heartbeat_threshold=LEASE[1])
    assert square(3).result(timeout=180) == 9
    info = read_connection(connection_path(server_dir))
    link, worker_pid = worker_link_and_pid().result(timeout=60)
    return info, link, worker_pid


def test_fuzzed_server_keeps_serving(server):
    info, worker_env, worker_pid = server
    started = time.monotonic()
    log_start = os.path.getsize(info.log_path)
    total, rejections, rss, newcomers, gaps = attack(info, worker_env)
    print(f"frames sent: {total}; server RSS MB {({k: round(v, 1) for k, v in rss.items()})}; "
          f"fuzzing took {time.monotonic() - started:.1f}s")
    print("newcomers' handshake + Welcome (s): "
          + ", ".join(f"{phase} n={len(t)} max={max(t):.3f}" for phase, t in newcomers.items())
          + f"; longest pause between server heartbeats (s): { {k: round(v, 2) for k, v in gaps.items()} }")
    assert newcomers["huge_batch"], "a newcomer connected while the server worked through the huge batch"
    assert all(gap <= HEARTBEAT_GAP_BOUND for gap in gaps.values()), gaps
    assert total >= FUZZ_FRAMES + WORKER_FRAMES
    os.kill(info.pid, 0)  # alive
    assert rss["end"] < rss["start"] + RSS_SLACK_MB, rss
    with open(info.log_path, errors="replace") as handle:
        handle.seek(log_start)
        log = handle.read()
    rejected = log.count("Rejected message from client") + log.count("not a client message")
    assert rejected == rejections, "one log line per rejected client frame"
    assert len(re.findall(r"before Hello|: no session", log)) >= 4  # the wording before and after sessions could resume
    assert "Rejected message from worker link" in log and "Unexpected StopWorker on the worker link" in log
    assert "Ignoring worker" in log and "Dropped" in log
    assert not re.search(r"Worker \S+ on \S+ lost", log), "no worker was lost"
    assert square(7).result(timeout=60) == 49
    assert worker_link_and_pid().result(timeout=60)[1] == worker_pid, "the worker survived every garbage task"


def attack(info, worker_env):
    """Phases 1-5 against the server ``info`` names; returns (frames sent, client frames that
    must have been rejected with a log line, server RSS in MB after each phase, newcomers'
    handshake times and the longest heartbeat pause per phase)."""
    attack = Attack(info, worker_env)
    try:
        attack.before_hello()
        attack.client_link()
        attack.worker_link()
        attack.huge_batch()
        attack.oversized()
    finally:
        attack.context.destroy(linger=0)
    print(f"sent by phase: {dict(attack.sent)}")
    return sum(attack.sent.values()), attack.rejected, attack.rss, attack.newcomers, attack.heartbeat_gaps


class Attack:
    """The peers and the bookkeeping of one run of :func:`attack`."""

    def __init__(self, info, worker_env):
        self.info, self.worker_env = info, worker_env
        self.rng = random.Random(SEED)
        self.keys = security.load_pair(os.environ["PARSL_DRAGON_KEY_PATH"], security.CLIENT, create=False)
        self.context = zmq.Context()
        self.sent = collections.Counter()  # frames (or messages) per phase
        self.rejected = 0  # client frames that must each get an ErrorReply and a log line
        self.rss = {"start": _rss_mb(info.pid)}
        self.fuzz = self.batch = None
        self.newcomers = collections.defaultdict(list)  # phase -> seconds from connect to Welcome
        self.heartbeat_gaps = {}  # phase -> longest pause between the server's heartbeats (s)
        self._next_newcomer = 0.0

    def peer(self, context=None, address=None, **kwargs):
        return Peer(context or self.context, address or self.info.address, self.keys.secret,
                    self.info.server_public_key.encode(), **kwargs)

    def newcomer(self, phase):
        """At most every PROBE_EVERY s: a new peer, in its own context (no I/O thread shared with
        ours), connects and says Hello; handshake and Welcome must come within HANDSHAKE_BOUND."""
        if time.monotonic() < self._next_newcomer:
            return
        context = zmq.Context()
        try:
            newcomer = self.peer(context, sessions=[peer for peer in (self.fuzz, self.batch) if peer])
            started = time.monotonic()
            newcomer.hello(timeout=HANDSHAKE_BOUND)
            self.newcomers[phase].append(time.monotonic() - started)
            newcomer.socket.send_multipart(p.encode(p.Goodbye()))
            newcomer.socket.close(linger=1000)
        finally:
            context.destroy(linger=0)
        self._next_newcomer = time.monotonic() + PROBE_EVERY

    def note_heartbeats(self, phase, peer, since):
        """The longest pause between the server's heartbeats to ``peer`` since ``since`` (time.time())."""
        sent = [since] + sorted(b for b in peer.beats if b >= since)
        self.heartbeat_gaps[phase] = max(b - a for a, b in zip(sent, sent[1:])) if len(sent) > 1 else float("inf")

    def before_hello(self):
        """Every message before Hello, even a valid Shutdown, is refused."""
        early = self.peer()
        for message in (p.Shutdown(reason="fuzz"), p.Goodbye(), p.Heartbeat(sent=0.0),
                        p.SubmitTasks(tasks=[p.TaskEntry(1)], payloads=[b"x"])):
            early.send(p.encode(message))
            self.sent["before_hello"] += 1
        early.wait_for(lambda: early.replies["ErrorReply"] == 4, 30, "4 'send Hello first' replies")
        assert early.reason_count("no session") == 4
        early.close()

    def client_link(self):
        """FUZZ_FRAMES random frames on one session; each gets exactly its expected answer."""
        fuzz = self.fuzz = self.peer()
        fuzz.hello()
        fuzz.sessions = [fuzz]
        since = time.time()
        factory = Frames(self.rng)
        expected, sent_ids = collections.Counter(), collections.Counter()
        for _ in range(FUZZ_FRAMES):
            outcome, frames, *ids = factory.make()
            expected[outcome] += 1
            sent_ids.update(ids[0] if ids else [])
            fuzz.keep_alive()
            fuzz.send(frames)
            self.newcomer("client_link")
        self.sent["client_link"] = FUZZ_FRAMES
        fuzz.wait_for(lambda: fuzz.replies["ErrorReply"] >= expected[REJECTED] and fuzz.results == sent_ids
                      and fuzz.replies["Refused"] >= expected[REFUSED], 120,
                      lambda: f"replies to every fuzzed frame: expected {dict(expected)}, got {dict(fuzz.replies)}, "
                              f"results missing {dict(sent_ids - fuzz.results)} extra {dict(fuzz.results - sent_ids)}",
                      tick=lambda: self.newcomer("client_link"))
        self.note_heartbeats("client_link", fuzz, since)
        self.rss["after_client_link"] = _rss_mb(self.info.pid)
        print(f"\nclient link: {FUZZ_FRAMES} frames (seed {SEED}) {dict(factory.kinds)}; "
              f"replies {dict(fuzz.replies)}; garbage tasks {sum(sent_ids.values())} -> {dict(fuzz.statuses)}")
        assert fuzz.replies["ErrorReply"] == expected[REJECTED]
        assert fuzz.replies["Refused"] == expected[REFUSED]
        assert fuzz.statuses[p.OK] == 0
        self.rejected += expected[REJECTED]

    def worker_link(self):
        """WORKER_FRAMES frames on the worker link, with the key only the server's workers receive."""
        env = self.worker_env
        fake = Peer(self.context, env["PARSL_DRAGON_WORKER_ADDRESS"], env["PARSL_DRAGON_WORKER_SECRET"].encode(),
                    env["PARSL_DRAGON_WORKER_SERVER_KEY"].encode(), identity=b"fuzz-worker", sessions=[self.fuzz])
        launches = 0
        for wants_reply, frames in worker_link_frames(self.rng, WORKER_FRAMES):
            launches += wants_reply
            fake.send(frames)
            self.fuzz.keep_alive()
        self.sent["worker_link"] = WORKER_FRAMES
        fake.wait_for(lambda: fake.replies["RanksDone"] == launches, 60, "RanksDone for every LaunchRanks")
        assert set(fake.replies) == {"RanksDone"}
        fake.close()

    def huge_batch(self):
        """One SubmitTasks of HUGE_BATCH tasks whose payloads are not Parsl packages."""
        batch = self.batch = self.peer()
        batch.hello()
        batch.sessions = [batch, self.fuzz]
        batch.send([_header({"type": "SubmitTasks", "tasks": [{"task_id": i} for i in range(HUGE_BATCH)]})]
                   + [b"not a parsl task %d" % i for i in range(HUGE_BATCH)])
        self.sent["huge_batch"] = 1
        started, since = time.monotonic(), time.time()
        batch.wait_for(lambda: sum(batch.results.values()) >= HUGE_BATCH, 300, f"{HUGE_BATCH} task failures",
                       tick=lambda: self.newcomer("huge_batch"))
        seconds = time.monotonic() - started
        self.note_heartbeats("huge_batch", batch, since)
        assert batch.results == collections.Counter(range(HUGE_BATCH)), "every task answered exactly once"
        assert batch.statuses == {p.EXCEPTION: HUGE_BATCH}
        failure = deserialize(batch.sample_exception).e_value
        print(f"huge batch: {HUGE_BATCH} garbage tasks failed in {seconds:.1f}s, e.g. {failure!r}")
        self.rss["after_huge_batch"] = _rss_mb(self.info.pid)

    def oversized(self):
        """A header over MAX_HEADER_BYTES is rejected; a frame over MAXMSGSIZE costs only its connection."""
        fuzz, batch = self.fuzz, self.batch
        fuzz.send([bytes([p.PROTOCOL_VERSION]) + b" " * p.MAX_HEADER_BYTES])
        self.sent["oversized_header"] = 1
        self.rejected += 1
        fuzz.wait_for(lambda: fuzz.reason_count(f"header of {p.MAX_HEADER_BYTES + 1} bytes exceeds") == 1,
                      60, "header size rejection")
        relay = None if REAL_FRAME else Relay(self.info.address)
        victim_context = zmq.Context()  # encrypting a real 1 GiB frame must not stall the other peers' I/O thread
        try:
            self._drop_victim(self.peer(victim_context, address=relay and relay.address, sessions=[fuzz, batch]),
                              relay)
        finally:
            victim_context.destroy(linger=0)
            if relay is not None:
                relay.stop()
        for peer in (fuzz, batch):  # the other sessions on the same server socket were not affected
            peer.send([_header({"type": "SubmitTasks", "tasks": [{"task_id": -1}]}), b"after the oversized frame"])
            peer.wait_for(lambda: peer.results[-1] == 1, 60, "a task on a surviving session")
        assert batch.replies["ErrorReply"] == 0
        self.rss["end"] = _rss_mb(self.info.pid)
        for peer in (fuzz, batch):
            peer.socket.send_multipart(p.encode(p.Goodbye()))
        time.sleep(0.2)

    def _drop_victim(self, victim, relay):
        """The victim's next frame is over MAXMSGSIZE: the server drops that connection; libzmq
        reconnects as a new peer, whose handshake the server answers within HANDSHAKE_BOUND."""
        victim.hello()
        monitor = victim.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        started = time.monotonic()
        if relay is None:  # the whole frame: 10-20 s of this process's CPU to encrypt, 3 GB
            victim.socket.send(bytearray(p.MAX_FRAME_BYTES + 1), copy=False)
        else:  # that frame's ZMTP header (long frame, its encrypted size): the server reads no further
            relay.cut_in(bytes([0x02]) + (p.MAX_WIRE_FRAME_BYTES + 1).to_bytes(8, "big"))
        self.sent["oversized_frame"] = 1
        events = []
        self._await_event(victim, monitor, zmq.EVENT_DISCONNECTED, 300 if relay is None else HANDSHAKE_BOUND, events)
        dropped = time.monotonic()
        self._await_event(victim, monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED, HANDSHAKE_BOUND, events)
        print(f"oversized frame ({'real' if relay is None else 'forged header'}): connection dropped after "
              f"{dropped - started:.2f}s, reconnect handshake after {time.monotonic() - dropped:.2f}s more")
        assert events == [zmq.EVENT_DISCONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED], events  # one drop, one reconnect
        victim.socket.disable_monitor()
        monitor.close(linger=0)
        victim.send(p.encode(p.Heartbeat(sent=0.0)))  # a new connection is a new peer: session gone
        victim.wait_for(lambda: victim.reason_count("no session") == 1, 30, "'no session' after the drop")
        assert relay is None or relay.accepted == 2, "the reconnect went through the relay too"
        victim.close()

    @staticmethod
    def _await_event(victim, monitor, event, timeout, events):
        """Append the victim's monitor events to ``events`` until ``event`` (earlier ones but
        a drop are ignored), keeping its sessions alive; at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not events or events[-1] != event:
            assert time.monotonic() < deadline, f"no {zmq.Event(event).name} within {timeout}s: " \
                                                f"{[zmq.Event(e).name for e in events]}"
            for peer in victim.sessions:
                peer.keep_alive()
                peer.drain()
            if monitor.poll(100):
                got = recv_monitor_message(monitor)["event"]
                if got == zmq.EVENT_DISCONNECTED or events:
                    events.append(got)
