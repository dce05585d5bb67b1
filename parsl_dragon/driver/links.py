"""One session with one server: the handshake that opens it and the link state the I/O thread keeps.

The handshake (``open_link``) runs on the caller's thread with a fresh DEALER socket and a
monitor socket for its connection events; the :class:`ServerLink` it returns is handed to
the client's I/O thread, which alone touches its sockets from then on::

    caller's thread                              I/O thread (client.py)
    open_link(): socket, Hello -> Welcome  --AddLink-->  links[server_id] = ServerLink
                                                         recv / heartbeats / connection events
                                                         close_link() when removed or lost
"""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

import parsl
import zmq
from zmq.utils.monitor import recv_monitor_message

from parsl_dragon.errors import AuthenticationFailed, HandshakeTimeout, ProtocolError, VersionMismatch
from parsl_dragon.host import local_sockets
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.connection import ConnectionInfo
from parsl_dragon.wire.security import KeyPair, make_curve_client

logger = logging.getLogger(__name__)

HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                    | zmq.EVENT_DISCONNECTED)
_HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                       zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@dataclass
class ServerLink:
    """One live session with one server (owned by the I/O thread after ``connect``)."""

    info: ConnectionInfo
    welcome: p.Welcome
    owner: bool
    socket: zmq.Socket
    monitor: zmq.Socket  # connection events: a drop, then a new handshake, means re-sync
    last_seen: float = field(default_factory=time.monotonic)
    stopping: str = ""  # the server said it is stopping: lose it at the next tick, not after the lease
    down_since: Optional[float] = None  # the connection dropped; libzmq is reconnecting
    load: Optional[p.Heartbeat] = None  # the server's last heartbeat: its workers, running and queued tasks

    @property
    def server_id(self) -> str:
        return self.welcome.server_id

    def on_connection_event(self, event: int) -> bool:
        """Note a dropped connection; True when a new handshake succeeds after one (then re-sync)."""
        if event == zmq.EVENT_DISCONNECTED and self.down_since is None:
            self.down_since = time.monotonic()
            logger.warning("Connection to server %s at %s dropped; reconnecting", self.server_id, self.info.address)
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self.down_since is not None:
            logger.warning("Connection to server %s re-established after %.1fs; re-syncing its tasks",
                           self.server_id, time.monotonic() - self.down_since)
            self.down_since = None
            return True
        elif event in _HANDSHAKE_FAILURES:
            logger.error("Reconnecting to server %s failed its CURVE handshake (event %d): the lease will "
                         "expire", self.server_id, event)
        return False


def local_address(info: ConnectionInfo) -> Optional[str]:
    """The server's Unix socket when it runs on this host (``host/local_sockets.py``: no CURVE,
    its private directory is the guard), else None: TCP + CURVE."""
    if info.local_address and info.host == socket.gethostname() and local_sockets.enabled(os.environ):
        return info.local_address
    return None


def open_link(context: zmq.Context, keys: KeyPair, client_id: str, info: ConnectionInfo, owner: bool,
              timeout_s: Optional[float]) -> ServerLink:
    """Connect to the server ``info`` describes and handshake; raise a clear error if refused."""
    if info.protocol != p.PROTOCOL_VERSION:
        raise VersionMismatch(f"connection file speaks protocol {info.protocol}, this client {p.PROTOCOL_VERSION}")
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"{client_id}/{uuid.uuid4().hex[:8]}".encode())
    sock.setsockopt(zmq.SNDHWM, 0)  # never block the I/O thread nor drop: leases bound the wait
    address = local_address(info)
    if address is None:
        make_curve_client(sock, keys.secret, info.server_public_key.encode())
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    try:
        sock.connect(address or info.address)
        sock.send_multipart(p.encode(p.Hello(
            client_id=client_id, protocol=p.PROTOCOL_VERSION, parsl_version=parsl.__version__,
            python_version=p.PYTHON_VERSION, owner=owner)))
        welcome = _await_welcome(sock, monitor, info, keys, timeout_s)
    except BaseException:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        raise
    return ServerLink(info=info, welcome=welcome, owner=owner, socket=sock, monitor=monitor)


def _await_welcome(sock: zmq.Socket, monitor: zmq.Socket, info: ConnectionInfo, keys: KeyPair,
                   timeout_s: Optional[float]) -> p.Welcome:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    while deadline is None or time.monotonic() < deadline:
        events = dict(poller.poll(timeout=100))
        if monitor in events:
            _check_handshake_event(recv_monitor_message(monitor)["event"], info, keys)
        if sock in events:
            message = p.decode(sock.recv_multipart())
            if isinstance(message, p.Welcome):
                return message
            if isinstance(message, p.Refused):
                raise VersionMismatch(f"server at {info.address} refused this client: {message.reason}")
            raise ProtocolError(f"expected Welcome from {info.address}, got {type(message).__name__}")
    raise HandshakeTimeout(
        f"no answer from the server at {info.address} within {timeout_s:.1f}s "
        f"(timeout_ms / PARSL_DRAGON_TIMEOUT); is it running? see its log {info.log_path}")


def _check_handshake_event(event: int, info: ConnectionInfo, keys: KeyPair) -> None:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        raise AuthenticationFailed(
            f"authentication failed: the server at {info.address} does not trust this client's key "
            f"{keys.public.decode()} (key not trusted; the server trusts the client key in its key "
            f"directory: use the same key_path / PARSL_DRAGON_KEY_PATH as the server). "
            f"The server logs the denial in {info.log_path}")
    if event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
        raise AuthenticationFailed(
            f"CURVE handshake with {info.address} failed: the server public key in the connection "
            f"file does not match the server (stale or foreign connection file?)")


def close_link(link: ServerLink, poller: zmq.Poller, linger: int) -> None:
    """Stop polling the link's sockets and close them (``linger`` ms for what is still queued)."""
    for sock in (link.socket, link.monitor):
        try:
            poller.unregister(sock)
        except KeyError:
            pass
    link.socket.disable_monitor()
    link.monitor.close(linger=0)
    link.socket.close(linger=linger)
