"""The client sessions of one server: who is connected, who owns the block, what waits for whom.

A session opens with an accepted ``Hello`` and lives as long as its lease (a client silent for
``heartbeat_period x heartbeat_threshold`` is dropped) or until ``Goodbye``. Its link's
identity is fixed by the client, so a link that reconnects resumes its session and its
backlog (``ROUTER_HANDOVER``). Messages to a link without a session are sent once, never kept.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Set

from parsl_dragon.server.links import Peers
from parsl_dragon.wire import protocol as p

logger = logging.getLogger(__name__)


@dataclass
class Session:
    """One connected client."""

    identity: bytes
    client_id: str
    owner: bool
    last_seen: float


class Clients:
    """Sessions by link identity, and the client socket's backlogs."""

    def __init__(self) -> None:
        self._sessions: Dict[bytes, Session] = {}
        self.links = Peers("client")
        self.owner_seen = False  # an owner connected at least once

    def __contains__(self, identity: object) -> bool:
        return identity in self._sessions

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._sessions))

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, identity: bytes) -> Optional[Session]:
        return self._sessions.get(identity)

    def open(self, identity: bytes, hello: p.Hello) -> None:
        """Open a session for an accepted Hello; a second Hello on a live session keeps it."""
        session = self._sessions.get(identity)
        if session is not None:
            logger.warning("Client %s said Hello again on a live session", hello.client_id)
            session.last_seen = time.monotonic()
        else:
            self._sessions[identity] = Session(identity, hello.client_id, hello.owner, time.monotonic())
        self.owner_seen = self.owner_seen or hello.owner
        logger.info("Client %s connected (owner=%s)", hello.client_id, hello.owner)

    def close(self, identity: bytes) -> None:
        """Forget a session and what waits for it."""
        self._sessions.pop(identity, None)
        self.links.forget(identity)

    def owners(self) -> List[Session]:
        return [s for s in self._sessions.values() if s.owner]

    def silent(self, now: float, lease: float) -> List[Session]:
        """Sessions whose client said nothing for longer than ``lease`` seconds."""
        return [s for s in self._sessions.values() if now - s.last_seen > lease]

    def send(self, identity: bytes, message: p.Message, keep: bool = True) -> None:
        """Send; with ``keep`` and a session, what the socket cannot take now waits in order."""
        self.links.send(identity, message, keep=keep and identity in self._sessions)

    def results_waiting(self, identity: bytes) -> Set[int]:
        """Client task ids of results still in this session's backlog (sent, as far as we know)."""
        return {r.task_id for m in self.links.waiting(identity) if isinstance(m, p.TaskResults) for r in m.results}
