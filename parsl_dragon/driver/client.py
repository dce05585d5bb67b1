"""The executor's side of the wire: one DEALER per server, one I/O thread for all of them.

Threads and data flow::

    submit thread(s)            I/O thread "parsl-dragon-io"            result thread "parsl-dragon-results"
    ---------------             ---------------------------            -------------------------------
    send_task() -> outbox  --waker-->  drain outbox, SubmitTasks  ---->  server
                                      recv TaskResults/Monitoring -----> inbox queue --> on_results()/on_monitoring()
                                      heartbeats out, leases in          (deserialize, resolve futures)
                                      lost server --------------------> inbox --> on_server_lost()

ZeroMQ sockets are used only by the thread that owns them: ``connect()`` does
the handshake on the caller's thread with a fresh socket, then hands the socket
to the I/O thread. Callbacks never run on the I/O thread, so a slow callback
cannot delay heartbeats.

A link keeps its session across a reconnect: its socket has a fixed identity (the server's
ROUTER hands the session over to the new connection) and an unbounded send queue, and its
monitor reports when the connection drops and comes back. Then ``on_reconnected`` lets the
executor ``Sync`` the tasks it still waits for; the tasks the server does not hold come back
failed with ``TaskLost``. A server that says it holds no session for the link
(``ErrorReply`` code ``no-session``) is lost at once, never silently kept alive.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Optional, Tuple

import parsl
import zmq
from zmq.utils.monitor import recv_monitor_message

from parsl_dragon.errors import AuthenticationFailed, HandshakeTimeout, ProtocolError, VersionMismatch
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.connection import ConnectionInfo
from parsl_dragon.wire.security import KeyPair, make_curve_client

logger = logging.getLogger(__name__)

_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                     | zmq.EVENT_DISCONNECTED)


@dataclass
class ServerLink:
    """One live session with one server (owned by the I/O thread after ``connect``)."""

    info: ConnectionInfo
    welcome: p.Welcome
    owner: bool
    socket: zmq.Socket
    monitor: zmq.Socket  # connection events: a drop, then a new handshake, means re-sync
    last_seen: float = field(default_factory=time.monotonic)
    load: Optional[p.Heartbeat] = None
    stopping: str = ""  # the server said it is stopping: lose it at the next tick, not after the lease
    down_since: Optional[float] = None  # the connection dropped; libzmq is reconnecting

    @property
    def server_id(self) -> str:
        return self.welcome.server_id


class DragonClient:
    """Sessions with any number of servers, with typed callbacks for what comes back."""

    def __init__(self, keys: KeyPair, *, timeout_s: Optional[float], heartbeat_period: float,
                 heartbeat_threshold: int,
                 on_results: Callable[[str, p.TaskResults], None],
                 on_monitoring: Callable[[p.Monitoring], None],
                 on_server_lost: Callable[[str, str], None],
                 on_reconnected: Callable[[str], None] = lambda server_id: None) -> None:
        self.keys = keys
        self.client_id = f"client-{uuid.uuid4().hex[:12]}"
        self.timeout_s = timeout_s
        self.heartbeat_period = heartbeat_period
        self.heartbeat_threshold = heartbeat_threshold
        self._on_results, self._on_monitoring, self._on_server_lost = on_results, on_monitoring, on_server_lost
        self._on_reconnected = on_reconnected
        self.context = zmq.Context()
        self.links: Dict[str, ServerLink] = {}
        self._outbox: Deque[Tuple[str, Any]] = deque()
        self._inbox: "queue.Queue[Optional[Tuple[str, Any]]]" = queue.Queue()
        self._waker_lock = threading.Lock()
        self._waker_out: Optional[zmq.Socket] = None
        self._waker_in: Optional[zmq.Socket] = None
        self._stop = threading.Event()
        self._io_thread: Optional[threading.Thread] = None
        self._result_thread: Optional[threading.Thread] = None

    # ---- lifecycle -----------------------------------------------------
    def start(self) -> None:
        address = f"inproc://waker-{self.client_id}"
        self._waker_in = self.context.socket(zmq.PULL)
        self._waker_in.bind(address)
        self._waker_out = self.context.socket(zmq.PUSH)
        self._waker_out.connect(address)
        self._io_thread = threading.Thread(target=self._io_loop, name="parsl-dragon-io", daemon=True)
        self._result_thread = threading.Thread(target=self._result_loop, name="parsl-dragon-results", daemon=True)
        self._io_thread.start()
        self._result_thread.start()

    def close(self) -> None:
        """Stop both threads and close every socket; safe to call twice or before start."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake()
        for thread in (self._io_thread, self._result_thread):
            if thread is not None and thread is not threading.current_thread():
                if thread is self._result_thread:
                    self._inbox.put(None)
                thread.join(timeout=10)
        with self._waker_lock:
            self.context.destroy(linger=0)

    # ---- handshake (caller's thread) ----------------------------------
    def connect(self, info: ConnectionInfo, owner: bool) -> ServerLink:
        """Open a session with the server described by ``info``; raise a clear error if refused."""
        if info.protocol != p.PROTOCOL_VERSION:
            raise VersionMismatch(f"connection file speaks protocol {info.protocol}, this client {p.PROTOCOL_VERSION}")
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, f"{self.client_id}/{uuid.uuid4().hex[:8]}".encode())
        sock.setsockopt(zmq.SNDHWM, 0)  # never block the I/O thread nor drop: leases bound the wait
        make_curve_client(sock, self.keys.secret, info.server_public_key.encode())
        monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        try:
            sock.connect(info.address)
            sock.send_multipart(p.encode(p.Hello(
                client_id=self.client_id, protocol=p.PROTOCOL_VERSION, parsl_version=parsl.__version__,
                python_version=p.PYTHON_VERSION, owner=owner)))
            welcome = self._await_welcome(sock, monitor, info)
        except BaseException:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
            raise
        link = ServerLink(info=info, welcome=welcome, owner=owner, socket=sock, monitor=monitor)
        self._command(("add", link))
        logger.info("Connected to server %s at %s (host %s, nodes %s, %d workers, owner=%s)",
                    welcome.server_id, info.address, welcome.host, welcome.nodes, welcome.workers, owner)
        return link

    def _await_welcome(self, sock: zmq.Socket, monitor: zmq.Socket, info: ConnectionInfo) -> p.Welcome:
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while deadline is None or time.monotonic() < deadline:
            events = dict(poller.poll(timeout=100))
            if monitor in events:
                self._check_handshake_event(recv_monitor_message(monitor)["event"], info)
            if sock in events:
                message = p.decode(sock.recv_multipart())
                if isinstance(message, p.Welcome):
                    return message
                if isinstance(message, p.Refused):
                    raise VersionMismatch(f"server at {info.address} refused this client: {message.reason}")
                raise ProtocolError(f"expected Welcome from {info.address}, got {type(message).__name__}")
        raise HandshakeTimeout(
            f"no answer from the server at {info.address} within {self.timeout_s:.1f}s "
            f"(timeout_ms / PARSL_DRAGON_TIMEOUT); is it running? see its log {info.log_path}")

    def _check_handshake_event(self, event: int, info: ConnectionInfo) -> None:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise AuthenticationFailed(
                f"authentication failed: the server at {info.address} does not trust this client's key "
                f"{self.keys.public.decode()} (key not trusted; the server trusts the client key in its key "
                f"directory: use the same key_path / PARSL_DRAGON_KEY_PATH as the server). "
                f"The server logs the denial in {info.log_path}")
        if event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            raise AuthenticationFailed(
                f"CURVE handshake with {info.address} failed: the server public key in the connection "
                f"file does not match the server (stale or foreign connection file?)")

    # ---- requests (any thread) ----------------------------------------
    def send_task(self, server_id: str, entry: p.TaskEntry, payload: bytes) -> None:
        """Queue one task for ``server_id``; the I/O thread batches what has queued up."""
        self._outbox.append((server_id, (entry, payload)))
        self._wake()

    def send(self, server_id: str, message: p.Message) -> None:
        """Queue a control message (e.g. ``Sync``) for ``server_id``, after the tasks queued before it."""
        self._command(("send", (server_id, message)))

    def disconnect(self, server_id: str, message: Optional[p.Message] = None) -> None:
        """Send ``message`` (Goodbye/Shutdown) if given, then forget the server."""
        self._command(("remove", (server_id, message)))

    def _command(self, command: Tuple[str, Any]) -> None:
        self._outbox.append(("", command))
        self._wake()

    def _wake(self) -> None:
        with self._waker_lock:
            if self._waker_out is not None and not self._waker_out.closed:
                try:
                    self._waker_out.send(b"", zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    # ---- I/O thread ----------------------------------------------------
    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._waker_in, zmq.POLLIN)
        next_beat = time.monotonic()
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(timeout=100))
                if self._waker_in in events:
                    self._drain_waker()
                self._drain_outbox(poller)
                for link in list(self.links.values()):
                    if link.monitor in events:
                        self._on_connection_events(link)
                    if link.socket in events:
                        self._receive(link)
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat(now, poller)
                    next_beat = now + self.heartbeat_period
        except Exception:
            logger.exception("I/O thread failed")
            for server_id in list(self.links):
                self._lose(server_id, "client I/O thread failed", poller)

    def _drain_waker(self) -> None:
        while True:
            try:
                self._waker_in.recv(zmq.NOBLOCK)  # type: ignore[union-attr]
            except zmq.Again:
                return

    def _drain_outbox(self, poller: zmq.Poller) -> None:
        batches: Dict[str, p.SubmitTasks] = {}
        while self._outbox:
            server_id, item = self._outbox.popleft()
            if server_id:
                batch = batches.setdefault(server_id, p.SubmitTasks(tasks=[]))
                batch.tasks.append(item[0])
                batch.payloads.append(item[1])
            else:
                self._flush(batches)
                self._run_command(item, poller)
        self._flush(batches)

    def _flush(self, batches: Dict[str, p.SubmitTasks]) -> None:
        for server_id, batch in batches.items():
            link = self.links.get(server_id)
            if link is None:
                ids = [t.task_id for t in batch.tasks]
                self._inbox.put(("failed", (server_id, ids, "ServerLost", f"server {server_id} is gone")))
            else:
                link.socket.send_multipart(p.encode(batch), copy=False)
        batches.clear()

    def _run_command(self, command: Tuple[str, Any], poller: zmq.Poller) -> None:
        kind, arg = command
        if kind == "add":
            self.links[arg.server_id] = arg
            poller.register(arg.socket, zmq.POLLIN)
            poller.register(arg.monitor, zmq.POLLIN)
        elif kind == "send":
            link = self.links.get(arg[0])
            if link is not None:
                link.socket.send_multipart(p.encode(arg[1]))
        elif kind == "remove":
            server_id, message = arg
            link = self.links.pop(server_id, None)
            if link is not None:
                if message is not None:
                    link.socket.send_multipart(p.encode(message))
                self._close_link(link, poller, linger=1000)

    def _on_connection_events(self, link: ServerLink) -> None:
        """Note a dropped connection; when a new handshake succeeds after one, re-sync."""
        while link.monitor.poll(0):
            event = recv_monitor_message(link.monitor)["event"]
            if event == zmq.EVENT_DISCONNECTED and link.down_since is None:
                link.down_since = time.monotonic()
                logger.warning("Connection to server %s at %s dropped; reconnecting", link.server_id,
                               link.info.address)
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and link.down_since is not None:
                logger.warning("Connection to server %s re-established after %.1fs; re-syncing its tasks",
                               link.server_id, time.monotonic() - link.down_since)
                link.down_since = None
                self._inbox.put(("reconnected", link.server_id))
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                           zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                logger.error("Reconnecting to server %s failed its CURVE handshake (event %d): the lease will "
                             "expire", link.server_id, event)

    def _receive(self, link: ServerLink) -> None:
        for _ in range(1000):
            try:
                frames = link.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            link.last_seen = time.monotonic()
            try:
                message = p.decode(frames)
            except ProtocolError as exc:
                logger.warning("Malformed message from server %s: %s", link.server_id, exc)
                continue
            self._on_message(link, message)

    def _on_message(self, link: ServerLink, message: p.Message) -> None:
        if isinstance(message, p.TaskResults):
            self._inbox.put(("results", (link.server_id, message)))
        elif isinstance(message, p.Heartbeat):
            link.load = message
        elif isinstance(message, p.Monitoring):
            self._inbox.put(("monitoring", message))
        elif isinstance(message, p.SyncReply):
            if message.unknown:
                logger.error("Server %s does not hold %d task(s) this client sent it: lost in the reconnect",
                             link.server_id, len(message.unknown))
                self._inbox.put(("failed", (link.server_id, message.unknown, "TaskLost",
                                            f"the task was lost in flight when the connection to server "
                                            f"{link.server_id} dropped; it may be retried")))
        elif isinstance(message, p.ErrorReply):
            logger.warning("Server %s reports: %s", link.server_id, message.reason)
            if message.code == p.STOPPING:
                link.stopping = message.reason
            elif message.code == p.NO_SESSION:
                link.stopping = f"the server holds no session for this client any more: {message.reason}"
        else:
            logger.warning("Unexpected %s from server %s", type(message).__name__, link.server_id)

    def _heartbeat(self, now: float, poller: zmq.Poller) -> None:
        lease = self.heartbeat_period * self.heartbeat_threshold
        for server_id, link in list(self.links.items()):
            if link.stopping:
                self._lose(server_id, link.stopping, poller)
            elif now - link.last_seen > lease:
                self._lose(server_id, f"no message from the server for {now - link.last_seen:.1f}s "
                                      f"(lease {lease:.1f}s = heartbeat_period x heartbeat_threshold)", poller)
            else:
                link.socket.send_multipart(p.encode(p.Heartbeat(sent=time.time())))

    def _lose(self, server_id: str, why: str, poller: zmq.Poller) -> None:
        link = self.links.pop(server_id, None)
        if link is None:
            return
        logger.error("Lost server %s at %s: %s", server_id, link.info.address, why)
        self._close_link(link, poller, linger=0)
        self._inbox.put(("lost", (server_id, why)))

    @staticmethod
    def _close_link(link: ServerLink, poller: zmq.Poller, linger: int) -> None:
        for sock in (link.socket, link.monitor):
            try:
                poller.unregister(sock)
            except KeyError:
                pass
        link.socket.disable_monitor()
        link.monitor.close(linger=0)
        link.socket.close(linger=linger)

    # ---- result thread -------------------------------------------------
    def _result_loop(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            kind, arg = item
            try:
                if kind == "results":
                    self._on_results(*arg)
                elif kind == "monitoring":
                    self._on_monitoring(arg)
                elif kind == "lost":
                    self._on_server_lost(*arg)
                elif kind == "reconnected":
                    self._on_reconnected(arg)
                elif kind == "failed":
                    server_id, ids, error_type, error = arg
                    self._on_results(server_id, p.TaskResults(
                        results=[p.TaskResult(task_id=i, status=p.FAILED, error_type=error_type, error=error)
                                 for i in ids],
                        payloads=[b""] * len(ids)))
            except BaseException:  # e.g. SystemExit re-raised from a task: this thread must survive it
                logger.exception("Result callback failed for %s", kind)
