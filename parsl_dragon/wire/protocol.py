"""Typed, versioned messages between executor, server and workers.

Wire format (one ZeroMQ multipart message)::

    frame 0      : 1 byte protocol version | UTF-8 JSON object {"type": "<Name>", <fields>}
    frame 1..n   : opaque payloads (pickled task buffers / results / monitoring records)

A payload larger than :data:`MAX_FRAME_BYTES` travels as consecutive frames of at most that
size; the header then says how many frames each payload took (``"chunks": [1, 3, 1]``) and
the receiver joins them. No payload is too large for the links: what bounds one is memory
(``max_payload_bytes``, checked by the sender that makes it: ``wire/frames.py``).

Only payload frames may hold pickled data, and they are only unpickled by Parsl's serializer
(or its plugin ``task/codec.py``) on the side that owns the task; control fields are JSON and are
never unpickled. Messages with payloads (``SubmitTasks``, ``TaskResults``,
``Monitoring``) keep one payload per entry, in entry order.

Decoding rules: a wrong version byte, invalid (or absurdly nested) JSON, a missing
``type``, an unknown type, missing required fields, a field of the wrong JSON type
(``int``/``float``/``str``/``bool``/list/object, as annotated; a float field accepts
an integer, an int field never a boolean) or a payload count that does not match raise
:class:`~parsl_dragon.errors.ProtocolError`. Unknown extra fields are logged and
ignored, so a newer peer can add fields without breaking an older one.

A task entry (``SubmitTasks.tasks[]``) is ``{"task_id": int, "spec": {...}, "placement":
{...}}``: ``spec`` is :meth:`~parsl_dragon.core.spec.TaskSpec.to_wire` (e.g. ``{}`` for a
serial task, ``{"num_nodes": 2, "ranks_per_node": 4, "num_ranks": 8, "pmi": "cray"}``),
``placement`` is :meth:`~parsl_dragon.core.placement.Placement.to_wire` (``{"hosts": [...],
"cores": [[...]], "gpus": [[...]]}``, one list per host; server to worker, MPI and GPU tasks only)
or ``{}``. A placement that ``Placement.from_wire`` refuses raises ``ProtocolError``. A
``spec`` that ``TaskSpec.from_wire`` refuses does *not*: it is the user's request, not the
peer's mistake, so that entry decodes with ``spec_error`` set (the
``InvalidResourceSpecification``) and the server fails that task alone.

Client <-> server: ``Hello`` -> ``Welcome`` | ``Refused``; then ``SubmitTasks``,
``Heartbeat``, ``Goodbye``, ``Shutdown``, ``Sync`` from the client; ``TaskResults``,
``Heartbeat``, ``Monitoring``, ``ErrorReply``, ``SyncReply`` from the server. A client
whose link was re-established sends ``Sync`` with the tasks it still waits for; the
server answers with those it does not hold (lost in flight), which the client fails.

Every frame stays within :data:`MAX_FRAME_BYTES`: libzmq drops the *connection* of a peer
whose frame exceeds the receiver's ``MAXMSGSIZE``, so :func:`encode` splits large payloads.
Worker <-> server: ``WorkerReady``, ``TaskResults`` from workers; ``SubmitTasks``,
``StopWorker`` from the server; after a reconnect ``WorkerResync`` -> ``ResyncMark``.
Worker <-> server, over the worker's rank link (a second link a worker opens for its MPI
tasks' ``$PARSL_MPI_PREFIX`` runs): ``LaunchRanks`` -> ``RanksDone``, matched by ``launch``.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Dict, List, Optional, Type

from parsl.executors.errors import InvalidResourceSpecification

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.spec import TaskSpec
from parsl_dragon.errors import ProtocolError
from parsl_dragon.vocabulary import LINK_MAX_FRAME_BYTES, LINK_MAX_WIRE_FRAME_BYTES
from parsl_dragon.wire.frames import CHUNKS, NOTICE_BYTES, join, payload_error, split  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
PYTHON_VERSION = "%d.%d" % sys.version_info[:2]
MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_FRAME_BYTES = LINK_MAX_FRAME_BYTES  # the most a sender puts in one frame (frames.split)
MAX_WIRE_FRAME_BYTES = LINK_MAX_WIRE_FRAME_BYTES  # receivers' MAXMSGSIZE

# result status values in TaskResult.status
OK = "ok"              # payload: serialized return value
EXCEPTION = "exception"  # payload: serialized RemoteExceptionWrapper
FAILED = "failed"      # no payload; ``error_type`` and ``error`` say why (worker lost, bad spec ...)
KEPT = "kept"          # no payload: the value stays in the block (``kept``: wire/dataplane.py)


class Message:
    """Base of every message; subclasses are dataclasses registered by type name."""

    registry: ClassVar[Dict[str, Type["Message"]]] = {}
    has_payloads: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Message.registry[cls.__name__] = cls


@dataclass
class Hello(Message):
    """Client's first message: who it is and which versions it speaks."""

    client_id: str
    protocol: int
    parsl_version: str
    python_version: str
    owner: bool = False


@dataclass
class Welcome(Message):
    """Server accepts the client; describes itself."""

    server_id: str
    host: str
    parsl_version: str
    python_version: str
    nodes: List[str]
    workers: int
    cores: List[int] = field(default_factory=list)  # per node, aligned with ``nodes``
    gpus: List[int] = field(default_factory=list)


@dataclass
class Refused(Message):
    """Server refuses the session (version mismatch, shutting down ...)."""

    reason: str


_JSON_OBJECT = {"json": dict}  # a typed field that travels as a JSON object (its to_wire form)
_LOCAL = {"local": True}       # a field that never travels


@dataclass
class TaskEntry:
    """One task inside ``SubmitTasks`` (wire form: the module docstring). ``placement`` is None
    for serial tasks without GPUs; ``spec_error`` is set, never sent, on a decoded entry whose spec did not
    validate (``spec`` is then the default)."""

    task_id: int
    spec: TaskSpec = field(default_factory=TaskSpec, metadata=_JSON_OBJECT)
    placement: Optional[Placement] = field(default=None, metadata=_JSON_OBJECT)
    spec_error: Optional[InvalidResourceSpecification] = field(default=None, compare=False, metadata=_LOCAL)

    def to_wire(self) -> Dict[str, Any]:
        return {"task_id": self.task_id, "spec": self.spec.to_wire(),
                "placement": {} if self.placement is None else self.placement.to_wire()}

    @classmethod
    def from_wire(cls, task_id: int, spec: Optional[Dict[str, Any]] = None,
                  placement: Optional[Dict[str, Any]] = None) -> "TaskEntry":
        """Rebuild an entry whose fields have their JSON types; ValueError for a bad placement."""
        typed, error = TaskSpec(), None
        try:
            typed = TaskSpec.from_wire({} if spec is None else spec)
        except InvalidResourceSpecification as exc:
            error = exc
        where = Placement.from_wire(task_id, placement) if placement else None
        return cls(task_id, typed, where, error)


@dataclass
class SubmitTasks(Message):
    """A batch of tasks; ``payloads[i]`` is the packed apply message of ``tasks[i]``."""

    has_payloads: ClassVar[bool] = True
    tasks: List[TaskEntry]
    payloads: List[bytes] = field(default_factory=list, repr=False)


@dataclass
class TaskResult:
    """One outcome inside ``TaskResults``."""

    task_id: int
    status: str
    host: str = ""
    error_type: str = ""
    error: str = ""
    kept: Dict[str, Any] = field(default_factory=dict)  # status KEPT: where (dataplane.KeptEntry)
    unkept: str = ""  # a result that was to be kept but travelled: why (the block's store is full ...)


@dataclass
class TaskResults(Message):
    """A batch of outcomes; ``payloads[i]`` belongs to ``results[i]`` (empty for FAILED).
    ``retiring``: the worker exits after this batch and takes no new task (task/devices.py);
    ``released``: tasks whose results come later (being kept), whose slots are free now."""

    has_payloads: ClassVar[bool] = True
    results: List[TaskResult]
    payloads: List[bytes] = field(default_factory=list, repr=False)
    retiring: bool = False
    released: List[int] = field(default_factory=list)


@dataclass
class Incoming(Message):
    """The next message on this link carries ``nbytes`` of payloads: the receiver's lease on the
    sender is extended for the transfer (``frames.lease_extension``), since nothing else, not
    even a heartbeat, can arrive before that message has arrived whole."""

    nbytes: int


@dataclass
class Monitoring(Message):
    """Monitoring records from tasks, each payload one pickled Parsl monitoring tuple."""

    has_payloads: ClassVar[bool] = True
    payloads: List[bytes] = field(default_factory=list, repr=False)


@dataclass
class Heartbeat(Message):
    """Lease renewal, both directions; the server's carries its load."""

    sent: float
    workers: int = 0
    running: int = 0
    queued: int = 0


@dataclass
class Goodbye(Message):
    """Client detaches; the server forgets it but keeps running."""


@dataclass
class Shutdown(Message):
    """Owner asks the server to stop its workers and end the runtime."""

    reason: str = ""


# ErrorReply.code values
STOPPING = "stopping"      # the server is stopping: take no new work there
NO_SESSION = "no-session"  # the server holds no session for this link (never said Hello, or dropped)
REJECTED = "rejected"      # one message was malformed or unexpected; the session goes on


@dataclass
class ErrorReply(Message):
    """Server tells a client that one of its messages was rejected, or why it cannot serve it."""

    reason: str
    code: str = REJECTED


@dataclass
class Sync(Message):
    """Client, after its link was re-established: the tasks it still waits for from this server."""

    task_ids: List[int]


@dataclass
class SyncReply(Message):
    """Server: which of ``Sync.task_ids`` it does not hold (lost in flight; the client fails them)."""

    unknown: List[int]


@dataclass
class WorkerReady(Message):
    """A worker announces itself (and again after each restart)."""

    worker_id: str
    host: str
    pid: int
    puid: int = 0


@dataclass
class WorkerResync(Message):
    """A worker whose link dropped and came back asks which tasks the server thinks it holds."""

    worker_id: str


@dataclass
class ResyncMark(Message):
    """Server's answer to ``WorkerResync``: the tasks it has sent that worker and has no result for.
    Sent on the new connection, it comes after every task that connection carries, so a task
    listed here that the worker neither holds nor answered after its ``WorkerResync`` was lost
    in flight (the task, or its result): the worker fails it with ``TaskLost``."""

    assigned: List[int]


@dataclass
class StopWorker(Message):
    """Server tells a worker to exit after its current task."""


@dataclass
class LaunchRanks(Message):
    """A worker asks the server to start a task's ranks, for one run of ``$PARSL_MPI_PREFIX``.

    ``launch`` tells apart the launches one rank link has in flight; the reply echoes it."""

    task_id: int
    argv: List[str]
    cwd: str
    env: Dict[str, str] = field(default_factory=dict)
    launch: int = 0


@dataclass
class RanksDone(Message):
    """The ranks of a task ended: exit code per rank (or per launcher), and where their output is."""

    task_id: int
    exit_codes: List[int]
    labels: List[str]
    output_dir: str = ""
    error: str = ""
    launch: int = 0  # the LaunchRanks.launch this answers


_NESTED = {"tasks": TaskEntry, "results": TaskResult}
_MAKERS: Dict[Type[Any], Callable[..., Any]] = {TaskEntry: TaskEntry.from_wire}  # the rest: the class itself


def _nested_json(item: Any) -> Dict[str, Any]:
    return item.to_wire() if isinstance(item, TaskEntry) else dict(item.__dict__)


def encode(message: Message) -> List[Any]:
    """Turn a message into frames (header + payloads, a large payload in several frames)."""
    body: Dict[str, Any] = {"type": type(message).__name__}
    payloads: List[bytes] = []
    for f in fields(message):  # type: ignore[arg-type]
        value = getattr(message, f.name)
        if f.name == "payloads":
            payloads = value
        elif f.name in _NESTED:
            body[f.name] = [_nested_json(item) for item in value]
        else:
            body[f.name] = value
    frames, counts = split(payloads)
    if len(frames) != len(payloads):
        body[CHUNKS] = counts
    header = bytes([PROTOCOL_VERSION]) + json.dumps(body, separators=(",", ":")).encode()
    return [header, *frames]


_JSON_TYPES: Dict[Any, Any] = {int: int, float: (int, float), str: str, bool: bool, list: list, dict: dict}


@functools.lru_cache(maxsize=None)
def _wire_names(cls: Type[Any]) -> frozenset:
    """The fields of ``cls`` that travel."""
    return frozenset(f.name for f in fields(cls) if not f.metadata.get("local"))


@functools.lru_cache(maxsize=None)
def _field_types(cls: Type[Any]) -> Dict[str, Any]:
    """Python types a JSON field of ``cls`` may hold (``Any`` fields are unchecked)."""
    hints = typing.get_type_hints(cls)
    types = {f.name: f.metadata.get("json") or _JSON_TYPES.get(typing.get_origin(hints[f.name]) or hints[f.name])
             for f in fields(cls) if f.name in _wire_names(cls)}
    return {name: t for name, t in types.items() if t is not None and name != "payloads"}


def _check_types(cls: Type[Any], data: Dict[str, Any], where: str) -> None:
    for name, expected in _field_types(cls).items():
        value = data.get(name)
        if name in data and (not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool)):
            raise ProtocolError(f"malformed {where}: field {name!r} has JSON type {type(value).__name__}")


def _build(cls: Type[Any], data: Dict[str, Any], where: str) -> Any:
    names = _wire_names(cls)
    extra = set(data) - names
    if extra:
        logger.warning("Ignoring unknown fields %s in %s", sorted(extra)[:10], where)
    _check_types(cls, data, where)
    try:
        return _MAKERS.get(cls, cls)(**{k: v for k, v in data.items() if k in names})
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed {where}: {exc}") from exc


def encode_with_notice(message: Message) -> List[List[Any]]:
    """The frames of ``message``, after those of an ``Incoming`` notice if its payloads are large."""
    nbytes = sum(len(payload) for payload in getattr(message, "payloads", ()))
    notice = [encode(Incoming(nbytes=nbytes))] if nbytes > NOTICE_BYTES else []
    return [*notice, encode(message)]


def decode(frames: List[bytes]) -> Message:
    """Turn frames back into a typed message, or raise :class:`ProtocolError`."""
    if not frames or not frames[0]:
        raise ProtocolError("empty message")
    header = frames[0]
    if header[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header[0]} is not supported (this side speaks {PROTOCOL_VERSION})")
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        body = json.loads(header[1:])
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ProtocolError("header has no message type")
    name = body.pop("type")
    counts = body.pop(CHUNKS, None)
    cls = Message.registry.get(name)
    if cls is None:
        raise ProtocolError(f"unknown message type {name[:64]!r}")
    for key, item_cls in _NESTED.items():
        if key in body and cls is not None and key in {f.name for f in fields(cls)}:
            if not isinstance(body[key], list) or not all(isinstance(i, dict) for i in body[key]):
                raise ProtocolError(f"{name}.{key} must be a list of objects")
            body[key] = [_build(item_cls, item, f"{name}.{key}[]") for item in body[key]]
    message = _build(cls, body, name)
    if cls.has_payloads:
        message.payloads = join(name, frames[1:], counts)
        entries = getattr(message, "tasks", getattr(message, "results", None))
        if entries is not None and len(entries) != len(message.payloads):
            raise ProtocolError(f"{name} has {len(entries)} entries but {len(message.payloads)} payloads")
    elif len(frames) > 1 or counts is not None:
        raise ProtocolError(f"{name} carries no payloads but {len(frames) - 1} were sent")
    return message


def check_versions(hello: Hello, parsl_version: str, python_version: str) -> Optional[str]:
    """Why a client cannot be served (None if it can): protocol, Parsl and Python must match."""
    if hello.protocol != PROTOCOL_VERSION:
        return f"protocol {hello.protocol} (client) != {PROTOCOL_VERSION} (server)"
    if hello.parsl_version != parsl_version:
        return f"Parsl {hello.parsl_version} (client) != {parsl_version} (server)"
    if hello.python_version != python_version:
        return f"Python {hello.python_version} (client) != {python_version} (server)"
    return None
