"""The small typed work items the client's threads hand each other (see the diagram in ``client``).

Into the I/O thread, through the outbox deque, in order: ``OutgoingTask`` (batched into
``SubmitTasks``) and the commands ``AddLink``, ``SendMessage``, ``RemoveLink`` (each sent after
the tasks queued before it). Out of the I/O thread, through the inbox queue, to the result
thread: ``ResultsArrived``, ``MonitoringArrived``, ``TasksFailed``, ``ServerGone``,
``LinkReconnected``; ``ClientClosing`` ends the inbox. A thread finds an item's handler with
:func:`handler_for`, which names an item it has no handler for instead of dropping it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Union

from parsl_dragon.driver.links import ServerLink
from parsl_dragon.wire import protocol as p


# ---- work items into the I/O thread (outbox), in order -----------------------
@dataclass(frozen=True)
class OutgoingTask:
    """One task for one server; the I/O thread batches what has queued up into ``SubmitTasks``."""

    server_id: str
    entry: p.TaskEntry
    payload: bytes


@dataclass(frozen=True)
class AddLink:
    """A session ``connect()`` opened: the I/O thread takes over its sockets."""

    link: ServerLink


@dataclass(frozen=True)
class SendMessage:
    """A control message (e.g. ``Sync``) for one server, sent after the tasks queued before it."""

    server_id: str
    message: p.Message


@dataclass(frozen=True)
class RemoveLink:
    """Send ``message`` (Goodbye/Shutdown) if there is one, then close the session."""

    server_id: str
    message: Optional[p.Message] = None


Command = Union[AddLink, SendMessage, RemoveLink]


# ---- work items out of the I/O thread (inbox), to the result thread ----------
@dataclass(frozen=True)
class ResultsArrived:
    """A ``TaskResults`` batch from a server."""

    server_id: str
    results: p.TaskResults


@dataclass(frozen=True)
class MonitoringArrived:
    """Monitoring records from a server."""

    message: p.Monitoring


@dataclass(frozen=True)
class TasksFailed:
    """Tasks the client itself knows failed (their server is gone, or lost them in a reconnect)."""

    server_id: str
    task_ids: List[int]
    error_type: str  # a wire error type of errors.py
    error: str


@dataclass(frozen=True)
class ServerGone:
    """A server was lost (lease expired, it stopped, or the I/O thread failed)."""

    server_id: str
    why: str


@dataclass(frozen=True)
class LinkReconnected:
    """A link's connection dropped and came back: time to ``Sync``."""

    server_id: str


@dataclass(frozen=True)
class ClientClosing:
    """The end of the inbox: ``close()`` puts it, the result thread stops at it."""


InboxItem = Union[ResultsArrived, MonitoringArrived, TasksFailed, ServerGone, LinkReconnected, ClientClosing]


def handler_for(handlers: Mapping[type, Callable[..., None]], item: object, thread: str) -> Callable[..., None]:
    """The handler of ``item``'s type; a ``TypeError`` naming the item if the thread has none."""
    try:
        return handlers[type(item)]
    except KeyError:
        raise TypeError(f"the {thread} thread has no handler for {type(item).__name__}: {item!r}") from None
