"""The Dragon server's service loop: clients in front, workers behind.

Runs as the head process of a block's Dragon runtime, in one thread::

    executors (DEALER, CURVE clients)                workers (DEALER, CURVE)
          |  Hello / SubmitTasks / Heartbeat / ...         |  WorkerReady / TaskResults / Monitoring
          v                                                v
    frontend ROUTER (domain "clients") ---> Server ---> backend ROUTER (domain "workers")
                                             |  TaskScheduler (pure): which worker gets what
                                             |  Backend (dragon): start / watch / stop workers

Payloads pass through untouched: the server never unpickles task data. Leases: a client silent
for ``heartbeat_period * heartbeat_threshold`` is dropped; when the owner is dropped (or no owner
arrives within ``owner_timeout_ms`` of the connection file being written) the server stops. The
worker side (ZAP handler, worker socket, workers) is up before this module is imported
(``server/worker_side.py``); the connection file is written once the client socket is bound too,
and removed when the server stops.

Nothing is dropped silently: what a peer cannot take now waits in its backlog (``server/links.py``),
sent first at every turn of the loop. A worker unreachable for a lease is lost (its task fails
with ``WorkerLost``); a client's backlog goes with its session. Both sockets use
``ROUTER_HANDOVER``: a peer that reconnects under its identity resumes its session, and a client
then ``Sync``s what it waits for.

Messages are dispatched by type through one table per socket; each handler is ``_on_<message>``.
Which task is whose: ``server/taskbook.py``; kept results: ``server/store.py``.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
import time
from typing import Callable, Dict, List, Optional

import zmq

from parsl_dragon.core.placement import NodeSlots
from parsl_dragon.core.scheduler import Assignment, TaskScheduler
from parsl_dragon.core.spec import spec_problem
from parsl_dragon.errors import INVALID_RESOURCE_SPECIFICATION, SERVER_LOST, WORKER_LOST, ProtocolError
from parsl_dragon.server.clients import Clients, Session
from parsl_dragon.server.links import Peers
from parsl_dragon.server.options import ServerOptions
from parsl_dragon.server.publish import connection_info, publish
from parsl_dragon.server.ranks import RankLaunches
from parsl_dragon.server.store import ResultStore
from parsl_dragon.server.taskbook import Task, TaskBook
from parsl_dragon.server.worker_side import WorkerSide
from parsl_dragon.vocabulary import RANK_LINK_SUFFIX, timeout_seconds
from parsl_dragon.wire import dataplane as d
from parsl_dragon.wire import frames
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.connection import remove_connection

logger = logging.getLogger(__name__)

__all__ = ["Server", "ServerOptions"]

PARSL_VERSION = importlib.metadata.version("parsl")  # what clients must run (without importing Parsl)


class Server:
    """One server per block; ``run()`` returns the process exit code."""

    def __init__(self, options: ServerOptions, backend, side: Optional[WorkerSide] = None) -> None:
        self.options = options
        self.backend = backend
        self.side = side or WorkerSide()  # main.py starts it (and the workers) before importing this
        self.server_id = self.side.server_id
        self.scheduler = TaskScheduler([])  # replaced in _start(), once the nodes are known
        self.context = self.side.context
        self.clients = Clients()
        self.tasks = TaskBook()
        self.worker_puids: Dict[str, int] = {}
        self.worker_links = Peers("worker")
        self.rank_launches = RankLaunches(backend, start_timeout_ms=options.rank_startup_timeout_ms)
        self.store = ResultStore(self.server_id, options.kept_results_memory, options.keep_results_over,
                                 os.path.dirname(options.log_path))
        self._stopping = ""
        self._published: Optional[float] = None  # when the connection file was written
        self._connection_path: Optional[str] = None

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

    def _start(self) -> None:
        opts = self.options
        self.side.start(opts, self.backend)  # nothing to do if main.py started it
        self.worker_links.socks = [s for s in (self.side.sock, self.side.local_sock) if s is not None]
        front, front_port, local, local_address = self.side.bind_clients(opts)
        self.clients.links.socks = [s for s in (front, local) if s is not None]
        self.scheduler = TaskScheduler([NodeSlots(n.hostname, opts.cores_of(n.hostname, n.cpus), opts.gpus_of(n.gpus))
                                        for n in self.backend.nodes()])
        self.store.open(len(self.scheduler.nodes))
        address = f"tcp://{opts.host_address}:{front_port}"
        self._connection_path = publish(connection_info(opts, self.server_id, address, local_address),
                                        opts.connection_file, os.path.dirname(opts.log_path))
        self._published = time.monotonic()
        logger.info("Serving clients at %s; connection file %s", address, self._connection_path)

    def _stop(self) -> None:
        logger.info("Stopping server: %s", self._stopping or "error")
        if self._connection_path is not None:
            remove_connection(self._connection_path, self.server_id)
        self._goodbye_clients()
        if self.worker_links.sock is not None:
            for worker_id in self.scheduler.worker_ids():
                self.worker_links.send(worker_id.encode(), p.StopWorker(), keep=False)
        self.rank_launches.close()  # their threads stop the ranks while the runtime is still up
        self.store.close()  # the DDict's pools go while the runtime is still up
        try:
            self.backend.stop(patience=2.0)
        except Exception:
            logger.exception("Stopping workers failed")
        self.side.close()
        logger.info("Server stopped")

    def _goodbye_clients(self) -> None:
        """Fail what is still outstanding so no client waits for a lease to expire."""
        if self.clients.links.sock is None:
            return
        for identity, ids in self.tasks.take_all().items():
            self._fail_client_tasks(identity, ids, SERVER_LOST, f"server stopped: {self._stopping}")
        for identity in self.clients:
            self._send_client(identity, p.ErrorReply(reason=f"server stopping: {self._stopping}", code=p.STOPPING))
        self._flush_backlogs()  # a last try; LINGER 0 drops what the sockets still hold at destroy

    # ---- main loop -----------------------------------------------------
    def _loop(self) -> None:
        poller = zmq.Poller()
        sockets = [(sock, self.worker_links, self._on_backend) for sock in self.worker_links.socks] + \
                  [(sock, self.clients.links, self._on_frontend) for sock in self.clients.links.socks]
        for sock, _, _ in sockets:
            poller.register(sock, zmq.POLLIN)
        poller.register(self.rank_launches.wakeup, zmq.POLLIN)  # a launch finished: reply now
        poller.register(self.store.wakeup, zmq.POLLIN)  # the shelf started, or a read finished
        next_tick = 0.0
        while not self._stopping:
            events = dict(poller.poll(timeout=200))
            for sock, peers, handler in sockets:
                if sock in events:
                    self._drain(sock, handler, peers)
            for identity, reply in self.rank_launches.finished():
                self.worker_links.send(identity, reply)
            if self.store.wakeup in events:
                self.store.poll(lambda ready: self.worker_links.send_each(self.scheduler.worker_ids(), ready),
                                lambda held: self._dispatch(self._submit(*held)), self._send_client)
            self._flush_backlogs()
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + min(1.0, self.options.heartbeat_period)

    def _drain(self, sock: zmq.Socket, handler: Callable[[bytes, List[bytes]], None], peers: Peers,
               limit: int = 1000) -> None:
        """Handle up to ``limit`` messages (replies go back on ``sock``); one bad message never stops the server."""
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(frames) < 2:
                logger.warning("Dropped a message without routing identity or body")
                continue
            peers.heard(frames[0], sock)
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
        lease = self.options.lease_seconds
        for client in self.clients.silent(now, lease):
            logger.warning("Client %s silent for %.1fs (lease %.1fs): dropping it",
                           client.client_id, now - client.last_seen, lease)
            self._drop_client(client.identity)
            if client.owner:
                self.request_stop(f"lost the lease of owner {client.client_id}")
        wait = timeout_seconds(self.options.owner_timeout_ms)
        if not self.clients.owner_seen and wait is not None and self._published is not None \
                and now - self._published > wait:
            self.request_stop(f"no owner connected within {wait:.0f}s of the connection file being written "
                              "(owner_timeout_ms / PARSL_DRAGON_OWNER_TIMEOUT)")

    def _check_workers(self) -> None:
        dead = self.backend.dead_workers(replace=lambda: not self._stopping)  # none while stopping
        if not dead:
            return
        by_puid = {puid: wid for wid, puid in self.worker_puids.items()}
        for puid, code in dead:
            worker_id = by_puid.get(puid)
            if worker_id is not None:
                self._on_worker_lost(worker_id, f"worker process exited with code {code}")

    def _check_worker_backlogs(self, now: float) -> None:
        """A worker that could not be reached for a lease is lost: its task fails, nothing hangs."""
        lease = self.options.lease_seconds
        for peer, backlog in self.worker_links.overdue(now, lease):
            worker_id = peer.decode(errors="replace")
            if worker_id in self.worker_puids:
                self._on_worker_lost(worker_id, f"its link was unreachable for {now - backlog.since:.1f}s "
                                                f"(lease {lease:.1f}s)")
            else:  # a rank launcher that went away: its task's worker fails the task itself
                logger.warning("Dropped %d message(s) for %r: unreachable for %.1fs", len(backlog.messages),
                               peer, now - backlog.since)

    # ---- frontend (clients) -------------------------------------------
    def _on_frontend(self, identity: bytes, frames: List[bytes]) -> None:
        try:
            message = p.decode(frames)
        except ProtocolError as exc:
            logger.warning("Rejected message from client %r: %s", identity, exc)
            self._send_client(identity, p.ErrorReply(reason=str(exc)), keep=False)
            return
        if isinstance(message, p.Hello):  # the one message that needs no session: it opens one
            self._on_hello(identity, message)
            return
        client = self.clients.get(identity)
        if client is None:
            logger.warning("Message %s from unknown client %r: no session", type(message).__name__, identity)
            self._send_client(identity, p.ErrorReply(
                reason="no session for this link (never said Hello, or dropped after its lease expired)",
                code=p.NO_SESSION))
            return
        client.last_seen = time.monotonic()
        handler = self._client_handlers.get(type(message))
        if handler is None:
            logger.warning("Rejected %s from client %s: not a client message", type(message).__name__,
                           client.client_id)
            self._send_client(identity, p.ErrorReply(reason=f"unexpected {type(message).__name__}"), keep=False)
            return
        handler(self, client, message)

    def _on_hello(self, identity: bytes, hello: p.Hello) -> None:
        problem = p.check_versions(hello, PARSL_VERSION, p.PYTHON_VERSION)
        if problem:
            logger.warning("Refusing client %s: %s", hello.client_id, problem)
            self._send_client(identity, p.Refused(reason=problem))
            return
        self.clients.open(identity, hello)
        self._send_client(identity, p.Welcome(
            server_id=self.server_id, host=socket.gethostname(), parsl_version=PARSL_VERSION,
            python_version=p.PYTHON_VERSION, nodes=self.backend.hostnames(),
            workers=self.backend.expected_workers(), cores=[n.cores for n in self.scheduler.nodes],
            gpus=[n.gpus for n in self.scheduler.nodes]))

    def _on_submit_tasks(self, client: Session, message: p.SubmitTasks) -> None:
        assignments: List[Assignment] = []
        for entry, payload in zip(message.tasks, message.payloads):
            if not (entry.spec_error is None and self.store.wants(entry.spec)
                    and self.store.hold((client.identity, entry, payload))):  # held while the shelf starts
                assignments += self._submit(client.identity, entry, payload)
        self._dispatch(assignments)

    def _submit(self, identity: bytes, entry: p.TaskEntry, payload: bytes) -> List[Assignment]:
        task_id = self.tasks.next_id()
        try:
            if entry.spec_error is not None:  # the spec on the wire did not validate
                raise entry.spec_error
            assignments = self.scheduler.submit(task_id, entry.spec)
        except Exception as exc:  # InvalidResourceSpecification: that task fails, the batch goes on
            self._fail_client_tasks(identity, [entry.task_id], INVALID_RESOURCE_SPECIFICATION, spec_problem(exc))
            return []
        self.tasks.add(task_id, Task(identity, entry.task_id, entry.spec, payload))
        return assignments

    def _on_goodbye(self, client: Session, message: p.Goodbye) -> None:
        logger.info("Client %s detached", client.client_id)
        self._drop_client(client.identity)

    def _on_sync(self, client: Session, message: p.Sync) -> None:
        """The client's link came back: say which of its tasks this server does not hold (they
        were lost in flight, either way); results still in its backlog count as held."""
        held = self.tasks.client_task_ids(client.identity) | self.clients.results_waiting(client.identity)
        unknown = [task_id for task_id in message.task_ids if task_id not in held]
        logger.info("Client %s re-synced: %d task(s) outstanding, %d unknown here", client.client_id,
                    len(message.task_ids), len(unknown))
        self._send_client(client.identity, p.SyncReply(unknown=unknown))

    def _on_client_incoming(self, client: Session, message: p.Incoming) -> None:
        client.last_seen = time.monotonic() + frames.lease_extension(message.nbytes)  # nothing arrives before it

    _client_handlers: Dict[type, Callable[["Server", Session, p.Message], None]] = {
        p.SubmitTasks: _on_submit_tasks, p.Heartbeat: lambda *_: None,  # last_seen is renewed already
        p.Goodbye: _on_goodbye, p.Sync: _on_sync, p.Incoming: _on_client_incoming,
        p.Shutdown: lambda self, client, m: self.request_stop(f"shutdown requested by {client.client_id}: {m.reason}"),
        d.FetchResult: lambda self, client, message: self.store.fetch(client.identity, message),
        d.EvictResults: lambda self, client, message: self.store.evict(message.keys)}

    def _drop_client(self, identity: bytes) -> None:
        """Forget a client and its backlog; its queued tasks are dropped (running ones finish,
        their results unrouted; their ranks are stopped, and their workers told so)."""
        self.clients.close(identity)
        why = "the task's client is gone; its ranks were stopped"
        for task_id in self.tasks.of_client(identity):
            for rank_link, reply in self.rank_launches.cancel_task(task_id, why):
                self.worker_links.send(rank_link, reply)
        dropped, assignments = self.scheduler.cancel(self.tasks.of_client(identity))
        self.tasks.discard(dropped)
        self._dispatch(assignments)

    # ---- backend (workers, rank launchers, monitoring radios) ----------
    def _on_backend(self, identity: bytes, frames: List[bytes]) -> None:
        try:
            message = p.decode(frames)
        except ProtocolError as exc:
            logger.warning("Rejected message from worker link %r: %s", identity, exc)
            return
        handler = self._worker_handlers.get(type(message))
        if handler is None:
            logger.warning("Unexpected %s on the worker link", type(message).__name__)
            return
        handler(self, identity, message)

    def _on_worker_ready(self, identity: bytes, message: p.WorkerReady) -> None:
        worker_id = identity.decode()
        logger.info("Worker %s ready on %s (pid %d, puid %d)", worker_id, message.host, message.pid, message.puid)
        try:
            assignments = self.scheduler.worker_ready(worker_id, message.host)
        except KeyError as exc:
            logger.warning("Ignoring worker %s: %s", worker_id, exc)
            return
        self.worker_puids[worker_id] = message.puid  # only accepted workers: bounded, and no puid aliasing
        ready = self.store.ready_message()
        if ready is not None:  # before its first task
            self.worker_links.send(identity, ready)
        self._dispatch(assignments)

    def _on_worker_resync(self, identity: bytes, message: p.WorkerResync) -> None:
        """A worker's link came back: tell it which tasks we sent it and have no result for; it
        fails those it does not hold (lost in flight) with ``TaskLost``."""
        worker_id = identity.decode(errors="replace")
        if worker_id not in self.worker_puids:
            logger.warning("Ignoring WorkerResync from unknown worker link %r", identity)
            return
        assigned = self.tasks.sent_to(worker_id)
        logger.warning("Worker %s re-synced after its link dropped: %d task(s) out there", worker_id, len(assigned))
        self.worker_links.send(identity, p.ResyncMark(assigned=assigned))

    def _on_task_results(self, identity: bytes, message: p.TaskResults) -> None:
        worker_id = identity.decode(errors="replace")
        routed = self.tasks.route(worker_id, message, self.clients)
        assignments: List[Assignment] = []
        if message.retiring and self.worker_puids.pop(worker_id, None) is not None:  # its exit is no loss
            logger.info("Worker %s retires (a GPU runtime bound it); the backend starts another", worker_id)
            assignments += self.scheduler.retire(worker_id)
        for task_id in routed.finished:
            self.rank_launches.cancel_task(task_id)  # ranks do not outlive their task
            assignments += self.scheduler.finished(task_id)
        for task_id in self.tasks.held_by(worker_id, message.released):  # being kept: the slot is free now
            assignments += self.scheduler.finished(task_id)
        if routed.unroutable:
            logger.warning("Dropped %d result(s) for unknown or finished tasks or departed clients: %s",
                           len(routed.unroutable), routed.unroutable[:10])
        self._dispatch(assignments)  # first: the freed workers start while the results go to their clients
        for client, batch in routed.to_clients.items():
            self._send_client(client, batch)

    def _on_launch_ranks(self, identity: bytes, message: p.LaunchRanks) -> None:
        refused = self.rank_launches.request(identity, message, self.tasks.get(message.task_id),
                                             os.path.dirname(self.options.log_path), self.options.accelerators)
        if refused is not None:
            self.worker_links.send(identity, refused)

    def _on_monitoring(self, identity: bytes, message: p.Monitoring) -> None:
        for client in self.clients.owners():
            self._send_client(client.identity, message)

    _worker_handlers: Dict[type, Callable[["Server", bytes, p.Message], None]] = {
        p.TaskResults: _on_task_results,
        p.WorkerReady: _on_worker_ready,
        p.Monitoring: _on_monitoring,
        p.LaunchRanks: _on_launch_ranks,
        p.WorkerResync: _on_worker_resync,
    }

    def _on_worker_lost(self, worker_id: str, why: str) -> None:
        host = self.scheduler.host_of_worker(worker_id) or "?"
        self.worker_puids.pop(worker_id, None)
        for link in (worker_id, worker_id + RANK_LINK_SUFFIX):
            self.worker_links.forget(link.encode())
        logger.warning("Worker %s on %s lost: %s", worker_id, host, why)
        lost, assignments = self.scheduler.worker_lost(worker_id)
        if lost is not None:
            self.rank_launches.cancel_task(lost)
        for identity, ids in self.tasks.take_by_client(self.tasks.sent_to(worker_id)).items():  # + released ones
            self._fail_client_tasks(identity, ids, WORKER_LOST, f"worker on host {host} was lost: {why}")
        self._dispatch(assignments)

    # ---- sending ------------------------------------------------------
    def _dispatch(self, assignments: List[Assignment]) -> None:
        for worker_id, batch in self.tasks.batches(assignments).items():
            self.worker_links.send(worker_id.encode(), batch)

    def _fail_client_tasks(self, identity: bytes, ids: List[int], error_type: str, error: str) -> None:
        results = [p.TaskResult(task_id=i, status=p.FAILED, error_type=error_type, error=error) for i in ids]
        self._send_client(identity, p.TaskResults(results=results, payloads=[b""] * len(ids)))

    def _send_client(self, identity: bytes, message: p.Message, keep: bool = True) -> None:
        """Send to a client (heartbeats and replies to bad messages with ``keep=False``)."""
        self.clients.send(identity, message, keep)

    def _flush_backlogs(self) -> None:
        self.clients.links.flush()
        self.worker_links.flush()
