"""The executor's side of the wire: one DEALER per server, one I/O thread for all of them.

Threads and data flow (each arrow carries one small frozen work item)::

    any thread                    I/O thread "parsl-dragon-io"          result thread "parsl-dragon-results"
    ----------                    ----------------------------          ------------------------------------
    send_task()  --OutgoingTask-->  batch into SubmitTasks -----> server
    connect()    --AddLink------->  take over the link's sockets
    send()       --SendMessage--->  send after the tasks queued before it (e.g. Sync)
    disconnect() --RemoveLink---->  Goodbye/Shutdown, close the link
                 (outbox deque + waker socket)
                                    recv TaskResults   --ResultsArrived---->  on_results()
                                    recv Monitoring    --MonitoringArrived->  on_monitoring()
                                    SyncReply.unknown, --TasksFailed------->  on_results() (FAILED results)
                                    task for a gone server
                                    heartbeats out, leases in
                                    lost server        --ServerGone-------->  on_server_lost()
                                    link back after a  --LinkReconnected--->  on_reconnected()
                                    drop                  (inbox queue)       (deserialize, resolve futures)

The work items are the frozen dataclasses of ``work_items``. Each thread dispatches them
through one dict from item type to handler; an item of any other type is a ``TypeError``
naming it (raised to the caller for a command, logged by the result thread, which goes on).
Messages from a server are dispatched the same way (a dict from message type to ``_on_<message>``).

ZeroMQ sockets are used only by the thread that owns them: ``connect()`` does
the handshake on the caller's thread with a fresh socket (``links.open_link``), then hands
the socket to the I/O thread. Callbacks never run on the I/O thread, so a slow callback
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
from typing import Any, Callable, Deque, Dict, Optional, Union

import zmq
from zmq.utils.monitor import recv_monitor_message

from parsl_dragon.driver.links import ServerLink, close_link, local_address, open_link
from parsl_dragon.driver.work_items import (
    AddLink,
    ClientClosing,
    Command,
    InboxItem,
    LinkReconnected,
    MonitoringArrived,
    OutgoingTask,
    RemoveLink,
    ResultsArrived,
    SendMessage,
    ServerGone,
    TasksFailed,
    handler_for,
)
from parsl_dragon.errors import SERVER_LOST, TASK_LOST, ProtocolError
from parsl_dragon.wire import dataplane as d
from parsl_dragon.wire import frames
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.connection import ConnectionInfo
from parsl_dragon.wire.security import KeyPair

logger = logging.getLogger(__name__)


class DragonClient:
    """Sessions with any number of servers, with typed callbacks for what comes back."""

    def __init__(self, keys: KeyPair, *, timeout_s: Optional[float], heartbeat_period: float,
                 heartbeat_threshold: int,
                 on_results: Callable[[str, p.TaskResults], None],
                 on_monitoring: Callable[[p.Monitoring], None],
                 on_server_lost: Callable[[str, str], None],
                 on_reconnected: Callable[[str], None] = lambda server_id: None,
                 on_fetched: Callable[[str, Any], None] = lambda server_id, message: None) -> None:
        self.keys = keys
        self.client_id = f"client-{uuid.uuid4().hex[:12]}"
        self.timeout_s = timeout_s
        self.heartbeat_period = heartbeat_period
        self.heartbeat_threshold = heartbeat_threshold
        # the executor's callbacks, run on the result thread
        self.results_callback, self.monitoring_callback = on_results, on_monitoring
        self.server_lost_callback, self.reconnected_callback = on_server_lost, on_reconnected
        self.context = zmq.Context()
        self.links: Dict[str, ServerLink] = {}
        self.bytes_sent = self.bytes_received = 0  # on every server link (tasks, results, requests), so far
        self._outbox: Deque[Union[OutgoingTask, Command]] = deque()
        self._inbox: "queue.Queue[InboxItem]" = queue.Queue()
        self._commands: Dict[type, Callable[[Any, zmq.Poller], None]] = {
            AddLink: self._on_add_link, SendMessage: self._on_send_message, RemoveLink: self._on_remove_link}
        self._deliveries: Dict[type, Callable[[Any], None]] = {
            ResultsArrived: self._on_results_arrived, MonitoringArrived: self._on_monitoring_arrived,
            TasksFailed: self._on_tasks_failed, ServerGone: self._on_server_gone,
            LinkReconnected: self._on_link_reconnected}
        self._server_messages: Dict[type, Callable[[ServerLink, Any], None]] = {
            p.TaskResults: self._on_task_results, p.Heartbeat: self._on_heartbeat, p.Monitoring: self._on_monitoring,
            p.SyncReply: self._on_sync_reply, p.ErrorReply: self._on_error_reply, p.Incoming: self._on_incoming,
            d.FetchedResult: lambda link, message: on_fetched(link.server_id, message)}  # on this I/O thread
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
                    self._inbox.put(ClientClosing())
                thread.join(timeout=10)
        with self._waker_lock:
            self.context.destroy(linger=0)

    # ---- requests (any thread) ----------------------------------------
    def connect(self, info: ConnectionInfo, owner: bool) -> ServerLink:
        """Open a session with the server described by ``info``; raise a clear error if refused."""
        link = open_link(self.context, self.keys, self.client_id, info, owner, self.timeout_s)
        self._command(AddLink(link))
        welcome = link.welcome
        logger.info("Connected to server %s at %s (host %s, nodes %s, %d workers, owner=%s)",
                    welcome.server_id, local_address(info) or info.address, welcome.host, welcome.nodes,
                    welcome.workers, owner)
        return link

    def send_task(self, server_id: str, entry: p.TaskEntry, payload: bytes) -> None:
        """Queue one task for ``server_id``; the I/O thread batches what has queued up."""
        self._outbox.append(OutgoingTask(server_id, entry, payload))
        self._wake()

    def send(self, server_id: str, message: p.Message) -> None:
        """Queue a control message (e.g. ``Sync``) for ``server_id``, after the tasks queued before it."""
        self._command(SendMessage(server_id, message))

    def disconnect(self, server_id: str, message: Optional[p.Message] = None) -> None:
        """Send ``message`` (Goodbye/Shutdown) if given, then forget the server."""
        self._command(RemoveLink(server_id, message))

    def _command(self, command: Command) -> None:
        handler_for(self._commands, command, "I/O")  # a wrong item fails here, in its sender's thread
        self._outbox.append(command)
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
            item = self._outbox.popleft()
            if isinstance(item, OutgoingTask):
                batch = batches.setdefault(item.server_id, p.SubmitTasks(tasks=[]))
                batch.tasks.append(item.entry)
                batch.payloads.append(item.payload)
            else:  # a command goes after the tasks queued before it
                self._flush(batches)
                handler_for(self._commands, item, "I/O")(item, poller)
        self._flush(batches)

    def _flush(self, batches: Dict[str, p.SubmitTasks]) -> None:
        for server_id, batch in batches.items():
            link = self.links.get(server_id)
            if link is None:
                ids = [t.task_id for t in batch.tasks]
                self._inbox.put(TasksFailed(server_id, ids, SERVER_LOST, f"server {server_id} is gone"))
            else:
                for message in p.encode_with_notice(batch):  # a large batch is announced first
                    link.socket.send_multipart(message, copy=False)
                    self.bytes_sent += sum(len(frame) for frame in message)
        batches.clear()

    def _on_add_link(self, command: AddLink, poller: zmq.Poller) -> None:
        link = command.link
        self.links[link.server_id] = link
        poller.register(link.socket, zmq.POLLIN)
        poller.register(link.monitor, zmq.POLLIN)

    def _on_send_message(self, command: SendMessage, poller: zmq.Poller) -> None:
        link = self.links.get(command.server_id)
        if link is not None:
            frames = p.encode(command.message)
            link.socket.send_multipart(frames)
            self.bytes_sent += sum(len(frame) for frame in frames)

    def _on_remove_link(self, command: RemoveLink, poller: zmq.Poller) -> None:
        link = self.links.pop(command.server_id, None)
        if link is not None:
            if command.message is not None:
                link.socket.send_multipart(p.encode(command.message))
            close_link(link, poller, linger=1000)

    def _on_connection_events(self, link: ServerLink) -> None:
        """Note a dropped connection; when a new handshake succeeds after one, re-sync."""
        while link.monitor.poll(0):
            if link.on_connection_event(recv_monitor_message(link.monitor)["event"]):
                self._inbox.put(LinkReconnected(link.server_id))

    def _receive(self, link: ServerLink) -> None:
        for _ in range(1000):
            try:
                frames = link.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            link.last_seen = time.monotonic()
            self.bytes_received += sum(len(frame) for frame in frames)
            try:
                message = p.decode(frames)
            except ProtocolError as exc:
                logger.warning("Malformed message from server %s: %s", link.server_id, exc)
                continue
            self._on_message(link, message)

    def _on_message(self, link: ServerLink, message: p.Message) -> None:
        handler = self._server_messages.get(type(message))
        if handler is None:
            logger.warning("Unexpected %s from server %s", type(message).__name__, link.server_id)
        else:
            handler(link, message)

    def _on_task_results(self, link: ServerLink, message: p.TaskResults) -> None:
        self._inbox.put(ResultsArrived(link.server_id, message))

    def _on_heartbeat(self, link: ServerLink, message: p.Heartbeat) -> None:
        link.load = message  # last_seen is renewed by every message; its figures feed status reports

    def _on_incoming(self, link: ServerLink, message: p.Incoming) -> None:
        link.last_seen = time.monotonic() + frames.lease_extension(message.nbytes)  # nothing arrives before it

    def _on_monitoring(self, link: ServerLink, message: p.Monitoring) -> None:
        self._inbox.put(MonitoringArrived(message))

    def _on_sync_reply(self, link: ServerLink, message: p.SyncReply) -> None:
        if message.unknown:
            logger.error("Server %s does not hold %d task(s) this client sent it: lost in the reconnect",
                         link.server_id, len(message.unknown))
            self._inbox.put(TasksFailed(link.server_id, message.unknown, TASK_LOST,
                                        f"the task was lost in flight when the connection to server "
                                        f"{link.server_id} dropped; it may be retried"))

    def _on_error_reply(self, link: ServerLink, message: p.ErrorReply) -> None:
        logger.warning("Server %s reports: %s", link.server_id, message.reason)
        if message.code == p.STOPPING:
            link.stopping = message.reason
        elif message.code == p.NO_SESSION:
            link.stopping = f"the server holds no session for this client any more: {message.reason}"

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
        close_link(link, poller, linger=0)
        self._inbox.put(ServerGone(server_id, why))

    # ---- result thread -------------------------------------------------
    def _result_loop(self) -> None:
        while True:
            item = self._inbox.get()
            if isinstance(item, ClientClosing):
                return
            try:
                handler_for(self._deliveries, item, "result")(item)
            except BaseException:  # e.g. SystemExit re-raised from a task: this thread must survive it
                logger.exception("Result callback failed for %s", type(item).__name__)

    def _on_results_arrived(self, item: ResultsArrived) -> None:
        self.results_callback(item.server_id, item.results)

    def _on_monitoring_arrived(self, item: MonitoringArrived) -> None:
        self.monitoring_callback(item.message)

    def _on_tasks_failed(self, item: TasksFailed) -> None:
        self.results_callback(item.server_id, p.TaskResults(
            results=[p.TaskResult(task_id=i, status=p.FAILED, error_type=item.error_type, error=item.error)
                     for i in item.task_ids],
            payloads=[b""] * len(item.task_ids)))

    def _on_server_gone(self, item: ServerGone) -> None:
        self.server_lost_callback(item.server_id, item.why)

    def _on_link_reconnected(self, item: LinkReconnected) -> None:
        self.reconnected_callback(item.server_id)
