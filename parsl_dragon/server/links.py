"""Sending on one of the server's ROUTER sockets without dropping anything.

Both sockets are ``ROUTER_MANDATORY``: a send to a peer that is momentarily unreachable
(``EHOSTUNREACH``) or behind (its queue full, ``EAGAIN``) fails instead of vanishing. What a
peer cannot take now waits in that peer's :class:`Backlog`, in order, and goes out first at
every turn of the service loop (:meth:`Peers.flush`). Messages not worth keeping (heartbeats,
replies to bad messages, links without a session) are sent once or dropped with a log line.
The service decides what an old backlog means: a worker unreachable for a lease is lost.
The sockets themselves are bound by ``server/worker_side.py`` (:func:`bind_router`,
:func:`bind_local_router`).
"""
from __future__ import annotations

import errno
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, Iterable, List, Optional, Tuple

import zmq

from parsl_dragon.wire import protocol as p

logger = logging.getLogger(__name__)

UNSENT = (errno.EAGAIN, errno.EHOSTUNREACH)  # ROUTER_MANDATORY: peer's queue full, or peer not connected


@dataclass
class Backlog:
    """What one peer could not take yet, oldest first, and since when."""

    since: float
    messages: Deque[p.Message] = field(default_factory=deque)


def try_send(sock: zmq.Socket, identity: bytes, message: p.Message) -> Optional[str]:
    """Send without blocking; why it was not sent (queue full, peer not connected), or None."""
    try:
        for frames in p.encode_with_notice(message):  # a large message is announced first
            sock.send_multipart([identity, *frames], zmq.NOBLOCK)
        return None
    except zmq.ZMQError as exc:
        if exc.errno in UNSENT:
            return exc.strerror
        raise


class Peers:
    """The peers of one kind (``name`` says which, for the log), their backlogs, and the ROUTER
    sockets they reach us on: the TCP + CURVE one first, a same-host Unix socket maybe second
    (``host/local_sockets.py``). A reply goes out on the socket its peer was last heard on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.socks: List[zmq.Socket] = []  # set once bound
        self.route: Dict[bytes, zmq.Socket] = {}
        self.backlogs: Dict[bytes, Backlog] = {}

    @property
    def sock(self) -> Optional[zmq.Socket]:
        """The TCP + CURVE socket (None before it is bound)."""
        return self.socks[0] if self.socks else None

    @sock.setter
    def sock(self, sock: zmq.Socket) -> None:
        self.socks[:1] = [sock]

    def add(self, sock: Optional[zmq.Socket]) -> None:
        """Another socket the same peers may come in on."""
        if sock is not None:
            self.socks.append(sock)

    def heard(self, identity: bytes, sock: zmq.Socket) -> None:
        if len(self.socks) > 1:
            self.route[identity] = sock

    def _sock_for(self, identity: bytes) -> zmq.Socket:
        return self.route.get(identity) or self.socks[0]

    def send(self, identity: bytes, message: p.Message, keep: bool = True) -> None:
        """Send, or with ``keep`` queue behind what already waits for this peer."""
        backlog = self.backlogs.get(identity)
        if backlog is not None and keep:
            backlog.messages.append(message)
            return
        problem = try_send(self._sock_for(identity), identity, message)
        if problem is None:
            return
        if keep:
            logger.info("%s link %r cannot take %s now (%s): kept in its backlog", self.name, identity,
                        type(message).__name__, problem)
            self.backlogs[identity] = Backlog(time.monotonic(), deque([message]))
        else:
            logger.debug("Not sent: %s to %s link %r (%s)", type(message).__name__, self.name, identity, problem)

    def send_each(self, names: Iterable[str], message: p.Message) -> None:
        """The same message to every peer named (worker ids), each kept until sent."""
        for name in names:
            self.send(name.encode(), message)

    def flush(self) -> None:
        """Send what waits, oldest first, until a peer's socket refuses again."""
        for identity, backlog in list(self.backlogs.items()):
            while backlog.messages and try_send(self._sock_for(identity), identity, backlog.messages[0]) is None:
                backlog.messages.popleft()
            if not backlog.messages:
                del self.backlogs[identity]

    def waiting(self, identity: bytes) -> Iterable[p.Message]:
        """What waits for ``identity`` (sent, as far as its sender is concerned)."""
        backlog = self.backlogs.get(identity)
        return tuple(backlog.messages) if backlog is not None else ()

    def forget(self, identity: bytes) -> None:
        """Drop what waits for a peer whose session is over."""
        self.backlogs.pop(identity, None)
        self.route.pop(identity, None)

    def overdue(self, now: float, lease: float) -> List[Tuple[bytes, Backlog]]:
        """Remove and return the backlogs waiting longer than ``lease`` seconds."""
        late = [(identity, backlog) for identity, backlog in self.backlogs.items() if now - backlog.since > lease]
        for identity, _ in late:
            del self.backlogs[identity]
        return late
