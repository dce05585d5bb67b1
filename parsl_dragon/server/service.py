"""The Dragon server's service loop: clients in front, workers behind.

Runs as the head process of a block's Dragon runtime, in one thread::

    executors (DEALER, CURVE clients)                workers (DEALER, CURVE)
          |  Hello / SubmitTasks / Heartbeat / ...         |  WorkerReady / TaskResults / Monitoring
          v                                                v
    frontend ROUTER (domain "clients") ---> Server ---> backend ROUTER (domain "workers")
                                             |  TaskScheduler (pure): which worker gets what
                                             |  Backend (dragon): start / watch / stop workers

Payloads pass through untouched: the server never unpickles task data. Leases:
a client silent for ``heartbeat_period * heartbeat_threshold`` is dropped; when
the owner is dropped (or no owner arrives within ``owner_timeout`` of the connection
file being written) the server stops. The connection file is written once both sockets
are bound and the workers are launching, and removed when the server stops.

Nothing is dropped silently: both sockets are ``ROUTER_MANDATORY``, so a send to a peer
that is momentarily unreachable or behind (its queue full) fails instead of vanishing;
the message waits in that peer's backlog, sent first at every turn of the loop. A worker
unreachable for a lease is lost (its task fails with ``WorkerLost``); a client's backlog
goes with its session. Both sockets use ``ROUTER_HANDOVER``: a peer that reconnects under
its identity resumes its session, and a client then ``Sync``s what it waits for.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple

import parsl
import zmq
from parsl.executors.errors import InvalidResourceSpecification

from parsl_dragon.core.placement import NodeSlots, Placement
from parsl_dragon.core.scheduler import Assignment, TaskScheduler
from parsl_dragon.core.spec import TaskSpec
from parsl_dragon.errors import ProtocolError
from parsl_dragon.server.auth import CLIENT_DOMAIN, WORKER_DOMAIN, start_authenticator
from parsl_dragon.server.ranks import RankLaunches, job_from
from parsl_dragon.vocabulary import (
    DEFAULT_OWNER_TIMEOUT_MS,
    DEFAULT_PMI,
    DEFAULT_RANK_STARTUP_TIMEOUT_MS,
    ENV_BLOCK_TOKEN,
    ENV_SERVER_ID,
    ENV_WORKER_ADDRESS,
    ENV_WORKER_SECRET,
    ENV_WORKER_SERVER_KEY,
    timeout_seconds,
)
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.connection import (
    CONNECTION_FILE,
    ConnectionInfo,
    read_connection,
    remove_connection,
    write_connection,
)
from parsl_dragon.wire.security import KeyPair, ephemeral_pair, make_curve_server

logger = logging.getLogger(__name__)

_UNSENT = (errno.EAGAIN, errno.EHOSTUNREACH)  # ROUTER_MANDATORY: peer's queue full, or peer not connected


@dataclass
class ServerOptions:
    """Everything the server needs, parsed from its command line by ``main``."""

    connection_file: str
    log_path: str
    server_keys: KeyPair
    client_keys: List[bytes]
    host_address: str = "127.0.0.1"
    cores_per_node: Optional[int] = None
    default_pmi: str = DEFAULT_PMI
    heartbeat_period: float = 5.0
    heartbeat_threshold: int = 3
    owner_timeout_ms: int = DEFAULT_OWNER_TIMEOUT_MS  # NO_LIMIT: wait forever
    job_id: Optional[str] = None
    block_id: Optional[str] = None
    launch_id: Optional[str] = None
    launcher_pid: Optional[int] = None
    rank_startup_timeout_ms: int = DEFAULT_RANK_STARTUP_TIMEOUT_MS  # + a per-rank allowance; NO_LIMIT: none
    cwd: str = field(default_factory=os.getcwd)


@dataclass
class _Client:
    identity: bytes
    client_id: str
    owner: bool
    last_seen: float
    backlog: Deque[p.Message] = field(default_factory=deque)  # not yet accepted by the socket, in order


@dataclass
class _Task:
    client: bytes
    client_task_id: int
    spec: TaskSpec
    payload: bytes
    placement: Optional[Placement] = None  # set for an MPI task once it is assigned
    worker: str = ""  # the worker it was sent to: only that worker's result is taken


@dataclass
class _WorkerBacklog:
    since: float  # when the first of these sends failed
    messages: Deque[p.Message] = field(default_factory=deque)


class Server:
    """One server per block; ``run()`` returns the process exit code."""

    def __init__(self, options: ServerOptions, backend) -> None:
        self.options = options
        self.backend = backend
        self.server_id = uuid.uuid4().hex
        self.scheduler = TaskScheduler([])  # replaced in _start(), once the nodes are known
        self.context = zmq.Context()
        self.worker_keys = ephemeral_pair()
        self.clients: Dict[bytes, _Client] = {}
        self.tasks: Dict[int, _Task] = {}
        self.worker_puids: Dict[str, int] = {}
        self.worker_backlogs: Dict[bytes, _WorkerBacklog] = {}  # by link identity
        self.rank_launches = RankLaunches(backend, start_timeout_ms=options.rank_startup_timeout_ms)
        self._next_task = 0
        self._launch_seq = 0
        self._stopping = ""
        self._owner_seen = False
        self._published: Optional[float] = None  # when the connection file was written
        self._connection_path: Optional[str] = None
        self._authenticator = None
        self.frontend: Optional[zmq.Socket] = None
        self.backend_socket: Optional[zmq.Socket] = None

    # ---- lifecycle -----------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop (safe from a signal handler)."""
        if not self._stopping:
            self._stopping = reason

    def run(self) -> int:
        try:
            self._start()
            self._loop()
            return 0
        except Exception:
            logger.exception("Server failed")
            return 1
        finally:
            self._stop()

    def _bind(self, domain: str, secret: bytes) -> Tuple[zmq.Socket, int]:
        """A CURVE ROUTER on the published address only (not every interface of the node)."""
        sock = self.context.socket(zmq.ROUTER)
        make_curve_server(sock, secret, domain)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_WIRE_FRAME_BYTES)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        port = sock.bind_to_random_port(f"tcp://{self.options.host_address}")
        return sock, port

    def _start(self) -> None:
        opts = self.options
        self._authenticator = start_authenticator(self.context, opts.client_keys, [self.worker_keys.public])
        self.frontend, front_port = self._bind(CLIENT_DOMAIN, opts.server_keys.secret)
        self.backend_socket, back_port = self._bind(WORKER_DOMAIN, self.worker_keys.secret)
        worker_address = f"tcp://{opts.host_address}:{back_port}"
        self.scheduler = TaskScheduler([NodeSlots(n.hostname, opts.cores_per_node or n.cpus, n.gpus)
                                        for n in self.backend.nodes()])
        count = self.backend.start_workers(worker_address, self._worker_env(worker_address), opts.cwd)
        logger.info("Launching %d workers on %s; backend at %s", count, self.backend.hostnames(), worker_address)
        self._write_connection(f"tcp://{opts.host_address}:{front_port}")

    def _worker_env(self, address: str) -> Dict[str, str]:
        return {
            ENV_WORKER_ADDRESS: address,
            ENV_WORKER_SECRET: self.worker_keys.secret.decode(),
            ENV_WORKER_SERVER_KEY: zmq.curve_public(self.worker_keys.secret).decode(),
            ENV_SERVER_ID: self.server_id,
            "PARSL_WORKER_BLOCK_ID": self.options.block_id or "",  # Parsl's convention (monitoring)
            "PARSL_WORKER_POOL_ID": self.server_id,
        }

    def _write_connection(self, address: str) -> None:
        opts = self.options
        info = ConnectionInfo(
            protocol=p.PROTOCOL_VERSION, address=address,
            server_public_key=opts.server_keys.public.decode(), host=socket.gethostname(),
            pid=os.getpid(), launcher_pid=opts.launcher_pid, job_id=opts.job_id,
            block_id=opts.block_id, server_id=self.server_id, created=time.time(),
            log_path=opts.log_path, block_token=os.environ.get(ENV_BLOCK_TOKEN),
            launch_id=opts.launch_id)
        self._connection_path = self._publish(info)
        self._published = time.monotonic()
        logger.info("Serving clients at %s; connection file %s", address, self._connection_path)

    def _publish(self, info: ConnectionInfo) -> str:
        """Write the connection file; return where. A shared ``server_path`` is taken only if no
        live server holds it (two drivers may race for it): the loser publishes in its block
        directory, where its own driver's watcher looks too."""
        path = self.options.connection_file
        private = os.path.join(os.path.dirname(self.options.log_path), CONNECTION_FILE)
        if path == private:
            write_connection(path, info)
            return path
        for _ in range(2):
            try:
                write_connection(path, info, exclusive=True)
                return path
            except FileExistsError:
                if not _stale(path):
                    break
                logger.warning("Replacing stale connection file %s", path)
                remove_connection(path)
        logger.warning("%s names another live server: publishing in %s instead", path, private)
        write_connection(private, info)
        return private

    def _stop(self) -> None:
        logger.info("Stopping server: %s", self._stopping or "error")
        if self._connection_path is not None:
            remove_connection(self._connection_path, self.server_id)
        self._goodbye_clients()
        if self.backend_socket is not None:
            for worker_id in self.scheduler.worker_ids():
                self._send_worker(worker_id.encode(), p.StopWorker(), keep=False)
        try:
            self.backend.stop(patience=2.0)
        except Exception:
            logger.exception("Stopping workers failed")
        if self._authenticator is not None:
            self._authenticator.stop()
        self.context.destroy(linger=0)
        logger.info("Server stopped")

    def _goodbye_clients(self) -> None:
        """Fail what is still outstanding so no client waits for a lease to expire."""
        if self.frontend is None:
            return
        outstanding: Dict[bytes, List[int]] = {}
        for task in self.tasks.values():
            outstanding.setdefault(task.client, []).append(task.client_task_id)
        for identity, ids in outstanding.items():
            self._fail_client_tasks(identity, ids, "ServerLost", f"server stopped: {self._stopping}")
        for identity in self.clients:
            self._send_client(identity, p.ErrorReply(reason=f"server stopping: {self._stopping}", code=p.STOPPING))
        self._flush_backlogs()  # a last try; LINGER 0 drops what the sockets still hold at destroy
        self.tasks.clear()

    # ---- main loop -----------------------------------------------------
    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend_socket, zmq.POLLIN)
        next_tick = 0.0
        while not self._stopping:
            events = dict(poller.poll(timeout=200))
            if self.backend_socket in events:
                self._drain(self.backend_socket, self._on_backend)
            if self.frontend in events:
                self._drain(self.frontend, self._on_frontend)
            for identity, reply in self.rank_launches.finished():
                self._send_worker(identity, reply)
            self._flush_backlogs()
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + min(1.0, self.options.heartbeat_period)

    def _drain(self, sock: zmq.Socket, handler, limit: int = 1000) -> None:
        """Handle up to ``limit`` messages; one bad message never stops the server."""
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(frames) < 2:
                logger.warning("Dropped a message without routing identity or body")
                continue
            try:
                handler(frames[0], frames[1:])
            except Exception:
                logger.exception("Handler failed on a message from %r; message dropped", frames[0])

    def _tick(self, now: float) -> None:
        self._check_leases(now)
        self._check_workers()
        self._check_worker_backlogs(now)
        for identity in self.clients:
            self._send_client(identity, p.Heartbeat(sent=time.time(), workers=self.scheduler.workers,
                                                    running=self.scheduler.running,
                                                    queued=self.scheduler.queued), keep=False)

    def _check_leases(self, now: float) -> None:
        lease = self.options.heartbeat_period * self.options.heartbeat_threshold
        for client in [c for c in self.clients.values() if now - c.last_seen > lease]:
            logger.warning("Client %s silent for %.1fs (lease %.1fs): dropping it",
                           client.client_id, now - client.last_seen, lease)
            self._drop_client(client.identity)
            if client.owner:
                self.request_stop(f"lost the lease of owner {client.client_id}")
        wait = timeout_seconds(self.options.owner_timeout_ms)
        if not self._owner_seen and wait is not None and self._published is not None \
                and now - self._published > wait:
            self.request_stop(f"no owner connected within {wait:.0f}s of the connection file being written "
                              "(owner_timeout_ms / PARSL_DRAGON_OWNER_TIMEOUT)")

    def _check_workers(self) -> None:
        dead = self.backend.dead_workers()
        if not dead:
            return
        by_puid = {puid: wid for wid, puid in self.worker_puids.items()}
        for puid, code in dead:
            worker_id = by_puid.get(puid)
            if worker_id is not None:
                self._on_worker_lost(worker_id, f"worker process exited with code {code}")

    # ---- frontend (clients) -------------------------------------------
    def _on_frontend(self, identity: bytes, frames: List[bytes]) -> None:
        try:
            message = p.decode(frames)
        except ProtocolError as exc:
            logger.warning("Rejected message from client %r: %s", identity, exc)
            self._send_client(identity, p.ErrorReply(reason=str(exc)), keep=False)
            return
        client = self.clients.get(identity)
        if isinstance(message, p.Hello):
            self._on_hello(identity, message)
        elif client is None:
            logger.warning("Message %s from unknown client %r: no session", type(message).__name__, identity)
            self._send_client(identity, p.ErrorReply(
                reason="no session for this link (never said Hello, or dropped after its lease expired)",
                code=p.NO_SESSION))
        else:
            client.last_seen = time.monotonic()
            handler = self._client_handlers.get(type(message))
            if handler is None:
                logger.warning("Rejected %s from client %s: not a client message", type(message).__name__,
                               client.client_id)
                self._send_client(identity, p.ErrorReply(reason=f"unexpected {type(message).__name__}"), keep=False)
            else:
                handler(self, client, message)

    def _on_hello(self, identity: bytes, hello: p.Hello) -> None:
        problem = p.check_versions(hello, parsl.__version__, p.PYTHON_VERSION)
        if problem:
            logger.warning("Refusing client %s: %s", hello.client_id, problem)
            self._send_client(identity, p.Refused(reason=problem))
            return
        if identity in self.clients:  # the same link said Hello twice: keep its session and backlog
            logger.warning("Client %s said Hello again on a live session", hello.client_id)
            self.clients[identity].last_seen = time.monotonic()
        else:
            self.clients[identity] = _Client(identity, hello.client_id, hello.owner, time.monotonic())
        self._owner_seen = self._owner_seen or hello.owner
        logger.info("Client %s connected (owner=%s)", hello.client_id, hello.owner)
        self._send_client(identity, p.Welcome(
            server_id=self.server_id, host=socket.gethostname(), parsl_version=parsl.__version__,
            python_version=p.PYTHON_VERSION, nodes=self.backend.hostnames(),
            workers=self.backend.expected_workers(), cores=[n.cores for n in self.scheduler.nodes],
            gpus=[n.gpus for n in self.scheduler.nodes]))

    def _on_submit_tasks(self, client: _Client, message: p.SubmitTasks) -> None:
        assignments: List[Assignment] = []
        for entry, payload in zip(message.tasks, message.payloads):
            self._next_task += 1
            try:
                if entry.spec_error is not None:  # the spec on the wire did not validate
                    raise entry.spec_error
                assignments += self.scheduler.submit(self._next_task, entry.spec)
            except Exception as exc:  # InvalidResourceSpecification: that task fails, the batch goes on
                self._fail_client_tasks(client.identity, [entry.task_id], "InvalidResourceSpecification",
                                        str(exc) if isinstance(exc, InvalidResourceSpecification)
                                        else f"unusable resource specification: {exc!r}")
                continue
            self.tasks[self._next_task] = _Task(client.identity, entry.task_id, entry.spec, payload)
        self._dispatch(assignments)

    def _on_client_heartbeat(self, client: _Client, message: p.Heartbeat) -> None:
        pass  # last_seen is already renewed

    def _on_goodbye(self, client: _Client, message: p.Goodbye) -> None:
        logger.info("Client %s detached", client.client_id)
        self._drop_client(client.identity)

    def _on_shutdown(self, client: _Client, message: p.Shutdown) -> None:
        self.request_stop(f"shutdown requested by {client.client_id}: {message.reason}")

    def _on_sync(self, client: _Client, message: p.Sync) -> None:
        """The client's link came back: say which of its tasks this server does not hold (they
        were lost in flight, either way); results still in its backlog count as held."""
        held = {t.client_task_id for t in self.tasks.values() if t.client == client.identity}
        for queued in client.backlog:
            if isinstance(queued, p.TaskResults):
                held.update(r.task_id for r in queued.results)
        unknown = [task_id for task_id in message.task_ids if task_id not in held]
        logger.info("Client %s re-synced: %d task(s) outstanding, %d unknown here", client.client_id,
                    len(message.task_ids), len(unknown))
        self._send_client(client.identity, p.SyncReply(unknown=unknown))

    _client_handlers = {
        p.SubmitTasks: _on_submit_tasks,
        p.Heartbeat: _on_client_heartbeat,
        p.Goodbye: _on_goodbye,
        p.Shutdown: _on_shutdown,
        p.Sync: _on_sync,
    }

    def _drop_client(self, identity: bytes) -> None:
        """Forget a client; its queued tasks are dropped (running ones finish, results unrouted)."""
        self.clients.pop(identity, None)
        mine = [tid for tid, task in self.tasks.items() if task.client == identity]
        dropped, assignments = self.scheduler.cancel(mine)
        for task_id in dropped:
            self.tasks.pop(task_id, None)
        self._dispatch(assignments)

    # ---- backend (workers) --------------------------------------------
    def _on_backend(self, identity: bytes, frames: List[bytes]) -> None:
        try:
            message = p.decode(frames)
        except ProtocolError as exc:
            logger.warning("Rejected message from worker link %r: %s", identity, exc)
            return
        if isinstance(message, p.TaskResults):
            self._on_task_results(identity.decode(errors="replace"), message)
        elif isinstance(message, p.WorkerReady):
            self._on_worker_ready(identity, message)
        elif isinstance(message, p.Monitoring):
            self._on_monitoring(message)
        elif isinstance(message, p.LaunchRanks):
            self._on_launch_ranks(identity, message)
        elif isinstance(message, p.WorkerResync):
            self._on_worker_resync(identity)
        else:
            logger.warning("Unexpected %s on the worker link", type(message).__name__)

    def _on_worker_ready(self, identity: bytes, message: p.WorkerReady) -> None:
        worker_id = identity.decode()
        logger.info("Worker %s ready on %s (pid %d, puid %d)", worker_id, message.host, message.pid, message.puid)
        try:
            assignments = self.scheduler.worker_ready(worker_id, message.host)
        except KeyError as exc:
            logger.warning("Ignoring worker %s: %s", worker_id, exc)
            return
        self.worker_puids[worker_id] = message.puid  # only accepted workers: bounded, and no puid aliasing
        self._dispatch(assignments)

    def _on_worker_resync(self, identity: bytes) -> None:
        """A worker's link came back: tell it which tasks we sent it and have no result for; it
        fails those it does not hold (lost in flight) with ``TaskLost``."""
        worker_id = identity.decode(errors="replace")
        if worker_id not in self.worker_puids:
            logger.warning("Ignoring WorkerResync from unknown worker link %r", identity)
            return
        assigned = sorted(tid for tid, task in self.tasks.items() if task.worker == worker_id)
        logger.warning("Worker %s re-synced after its link dropped: %d task(s) out there", worker_id, len(assigned))
        self._send_worker(identity, p.ResyncMark(assigned=assigned))

    def _on_worker_lost(self, worker_id: str, why: str) -> None:
        host = self.scheduler.host_of_worker(worker_id) or "?"
        self.worker_puids.pop(worker_id, None)
        self.worker_backlogs.pop(worker_id.encode(), None)
        logger.warning("Worker %s on %s lost: %s", worker_id, host, why)
        lost, assignments = self.scheduler.worker_lost(worker_id)
        self._fail_lost([lost] if lost is not None else [], host, why)
        self._dispatch(assignments)

    def _fail_lost(self, lost: List[int], host: str, why: str) -> None:
        by_client: Dict[bytes, List[int]] = {}
        for task_id in lost:
            task = self.tasks.pop(task_id, None)
            if task is not None:
                by_client.setdefault(task.client, []).append(task.client_task_id)
        for identity, ids in by_client.items():
            self._fail_client_tasks(identity, ids, "WorkerLost", f"worker on host {host} was lost: {why}")

    def _on_task_results(self, worker_id: str, message: p.TaskResults) -> None:
        assignments: List[Assignment] = []
        per_client: Dict[bytes, p.TaskResults] = {}
        unroutable: List[int] = []
        for result, payload in zip(message.results, message.payloads):
            task = self.tasks.get(result.task_id)
            if task is not None and task.worker != worker_id:
                logger.warning("Dropped a result for task %d from worker %s: it was sent to %s",
                               result.task_id, worker_id, task.worker or "no worker")
                continue
            self.tasks.pop(result.task_id, None)
            assignments += self.scheduler.finished(result.task_id)
            if task is None or task.client not in self.clients:
                unroutable.append(result.task_id)  # unknown id, duplicate reply or client gone
                continue
            batch = per_client.setdefault(task.client, p.TaskResults(results=[]))
            result.task_id = task.client_task_id
            batch.results.append(result)
            batch.payloads.append(payload)
        if unroutable:
            logger.warning("Dropped %d result(s) for unknown or finished tasks or departed clients: %s",
                           len(unroutable), unroutable[:10])
        for identity, batch in per_client.items():
            self._send_client(identity, batch)
        self._dispatch(assignments)

    def _on_launch_ranks(self, identity: bytes, message: p.LaunchRanks) -> None:
        task = self.tasks.get(message.task_id)
        if task is None or not task.placement:
            reply = p.RanksDone(task_id=message.task_id, exit_codes=[], labels=[],
                                error=f"no running MPI task {message.task_id} on this server")
            self._send_worker(identity, reply)
            return
        self._launch_seq += 1
        output_dir = os.path.join(os.path.dirname(self.options.log_path), "ranks",
                                  f"task-{message.task_id}-{self._launch_seq}")
        job = job_from(message, task.spec, task.placement, output_dir)
        self.rank_launches.start(identity, job, task.client_task_id)

    def _on_monitoring(self, message: p.Monitoring) -> None:
        for client in self.clients.values():
            if client.owner:
                self._send_client(client.identity, message)

    # ---- sending ------------------------------------------------------
    def _dispatch(self, assignments: List[Assignment]) -> None:
        batches: Dict[str, p.SubmitTasks] = {}
        for assignment in assignments:
            task = self.tasks.get(assignment.task_id)
            if task is None:
                continue
            task.placement = assignment.placement
            task.worker = assignment.worker_id
            batch = batches.setdefault(assignment.worker_id, p.SubmitTasks(tasks=[]))
            batch.tasks.append(p.TaskEntry(task_id=assignment.task_id, spec=task.spec, placement=task.placement))
            batch.payloads.append(task.payload)
            task.payload = b""  # the worker has it now; keep memory bounded
        for worker_id, batch in batches.items():
            self._send_worker(worker_id.encode(), batch)

    def _fail_client_tasks(self, identity: bytes, ids: List[int], error_type: str, error: str) -> None:
        results = [p.TaskResult(task_id=i, status=p.FAILED, error_type=error_type, error=error) for i in ids]
        self._send_client(identity, p.TaskResults(results=results, payloads=[b""] * len(ids)))

    def _send_client(self, identity: bytes, message: p.Message, keep: bool = True) -> None:
        """Send to a client; with ``keep``, what its socket cannot take now waits in the
        session's backlog (in order) instead of being dropped. Heartbeats and replies to
        bad messages are not kept."""
        client = self.clients.get(identity)
        if client is not None and keep and client.backlog:
            client.backlog.append(message)
            return
        problem = self._try_send(self.frontend, identity, message)  # type: ignore[arg-type]
        if problem is None:
            return
        if client is not None and keep:
            logger.info("Client %s cannot take %s now (%s): kept in its backlog", client.client_id,
                        type(message).__name__, problem)
            client.backlog.append(message)
        else:
            logger.debug("Not sent: %s to %r (%s)", type(message).__name__, identity, problem)

    def _send_worker(self, peer: bytes, message: p.Message, keep: bool = True) -> None:
        """Send to a worker (or a rank launcher) on the worker link; what cannot be sent now
        waits in that peer's backlog, and a worker unreachable for a lease is lost."""
        backlog = self.worker_backlogs.get(peer)
        if backlog is not None and keep:
            backlog.messages.append(message)
            return
        problem = self._try_send(self.backend_socket, peer, message)  # type: ignore[arg-type]
        if problem is not None and keep:
            logger.warning("Worker link %r cannot take %s now (%s): kept in its backlog", peer,
                           type(message).__name__, problem)
            self.worker_backlogs[peer] = _WorkerBacklog(time.monotonic(), deque([message]))

    @staticmethod
    def _try_send(sock: zmq.Socket, identity: bytes, message: p.Message) -> Optional[str]:
        """Send without blocking; why it was not sent (the peer's queue is full, the peer is not
        connected), or None."""
        try:
            sock.send_multipart([identity, *p.encode(message)], zmq.NOBLOCK)
            return None
        except zmq.ZMQError as exc:
            if exc.errno in _UNSENT:
                return exc.strerror
            raise

    def _flush_backlogs(self) -> None:
        """Send what waits, oldest first, until a peer's socket refuses again."""
        for client in self.clients.values():
            self._send_backlog(self.frontend, client.identity, client.backlog)  # type: ignore[arg-type]
        for peer, backlog in list(self.worker_backlogs.items()):
            if self._send_backlog(self.backend_socket, peer, backlog.messages):  # type: ignore[arg-type]
                del self.worker_backlogs[peer]

    def _send_backlog(self, sock: zmq.Socket, identity: bytes, backlog: Deque[p.Message]) -> bool:
        """Send ``backlog`` in order until the socket refuses; True once it is empty."""
        while backlog and self._try_send(sock, identity, backlog[0]) is None:
            backlog.popleft()
        return not backlog

    def _check_worker_backlogs(self, now: float) -> None:
        """A worker that could not be reached for a lease is lost: its task fails, nothing hangs."""
        lease = self.options.heartbeat_period * self.options.heartbeat_threshold
        for peer, backlog in list(self.worker_backlogs.items()):
            if now - backlog.since <= lease:
                continue
            self.worker_backlogs.pop(peer, None)
            worker_id = peer.decode(errors="replace")
            if worker_id in self.worker_puids:
                self._on_worker_lost(worker_id, f"its link was unreachable for {now - backlog.since:.1f}s "
                                                f"(lease {lease:.1f}s)")
            else:  # a rank launcher that went away: its task's worker fails the task itself
                logger.warning("Dropped %d message(s) for %r: unreachable for %.1fs", len(backlog.messages),
                               peer, now - backlog.since)


def _stale(path: str) -> bool:
    """True if the connection file at ``path`` names a server that is gone (or cannot be read)."""
    try:
        return read_connection(path).pid_alive() is False
    except FileNotFoundError:
        return True
    except Exception:  # damaged or refused: not ours to take over
        return False
