"""The connection file: how a driver finds, shares and tears down a server.

One JSON file per server, mode 0600, written atomically (temporary file, then
rename, or hard link when it must not replace another server's file). Fields::

    {"protocol": 1, "address": "tcp://10.0.0.5:50123", "server_public_key": "<z85>",
     "host": "nid0001", "pid": 4242, "launcher_pid": 4200, "job_id": "1234",
     "block_id": "0", "server_id": "<uuid hex>", "created": 1732435200.0,
     "log_path": "/.../server.log", "block_token": "<uuid hex>", "launch_id": "<uuid hex>"}

``launcher_pid`` is the block's boot process, which owns the runtime (teardown
escalates to it); every process of the block carries ``block_token`` in its
environment as ``PARSL_DRAGON_BLOCK_TOKEN``, so teardown can find them even when
the boot process is gone, and never touches a process without it. ``launch_id`` is
the executor's id of the block launch that started the server, so an executor
accepts only the server it launched. ``launcher_pid``, ``job_id``, ``block_id``,
``block_token`` and ``launch_id`` may be null; the last two may be absent (older
servers). A file whose server no longer answers is stale; teardown removes it.

The file says which server to trust, so a reader refuses it (:class:`InsecurePath`)
unless it is a regular file (not a symlink, never a FIFO that would block) in a
directory, both owned by us and writable by nobody else. A field of the wrong type
is a damaged file (:class:`ConfigurationError` naming the field).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
import typing
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Dict, Optional, Tuple

from parsl_dragon.errors import ConfigurationError
from parsl_dragon.wire import security

CONNECTION_FILE = "connection.json"
_PIDS = ("pid", "launcher_pid")  # must be > 0: 0 and -1 mean process groups to os.kill


@dataclass(frozen=True)
class ConnectionInfo:
    """What a client needs to reach a server, and what teardown needs to stop it."""

    protocol: int
    address: str
    server_public_key: str
    host: str
    pid: int
    launcher_pid: Optional[int]
    job_id: Optional[str]
    block_id: Optional[str]
    server_id: str
    created: float
    log_path: str
    block_token: Optional[str] = None
    launch_id: Optional[str] = None
    local_address: Optional[str] = None  # ipc://... for a client on ``host`` (host/local_sockets.py)

    def pid_alive(self) -> Optional[bool]:
        """True/False if the server runs on this host and its pid does/doesn't exist; None if unknown."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


_FIELD_TYPES = typing.get_type_hints(ConnectionInfo)


def connection_path(directory: str) -> str:
    """The connection file's path inside a server directory."""
    return os.path.join(directory, CONNECTION_FILE)


def write_connection(path: str, info: ConnectionInfo, exclusive: bool = False) -> None:
    """Write ``info`` to ``path`` atomically with mode 0600, in a private directory (made if missing).

    With ``exclusive`` an existing file at ``path`` is kept and :class:`FileExistsError` raised,
    so of two servers racing for one path exactly one publishes there.
    """
    directory = os.path.dirname(path) or "."
    security.private_directory(directory)
    tmp = _write_temporary(directory, info)
    try:
        if exclusive:
            os.link(tmp, path)  # fails if anything is at path; never replaces it
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_temporary(directory: str, info: ConnectionInfo) -> str:
    """A new 0600 file in ``directory`` holding ``info``, flushed to disk; its path."""
    fd, tmp = tempfile.mkstemp(prefix=".connection-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(info), handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def read_connection(path: str) -> ConnectionInfo:
    """Read a connection file; a missing one raises :class:`FileNotFoundError`, one that others
    own or can write (or its directory) :class:`InsecurePath`, a damaged one :class:`ConfigurationError`."""
    try:
        with os.fdopen(_open_trusted(path), "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (FileNotFoundError, ConfigurationError):
        raise
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _damaged(path, str(exc)) from exc
    return _info_from(data, path)


def _open_trusted(path: str) -> int:
    """A descriptor of ``path`` after checking it and its directory (never follows a symlink
    at ``path`` nor blocks on a FIFO: the file is opened in the directory that was checked)."""
    directory = os.path.dirname(path) or "."
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        security.check_trusted(directory, os.fstat(dir_fd), "directory of connection file", directory=True)
        fd = _open_no_follow(os.path.basename(path), dir_fd, path)
    finally:
        os.close(dir_fd)
    try:
        security.check_trusted(path, os.fstat(fd), "connection file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_no_follow(name: str, dir_fd: int, path: str) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink: refuse it, naming what it is
            security.check_trusted(path, os.lstat(name, dir_fd=dir_fd), "connection file")
        raise


def _damaged(path: str, detail: str) -> ConfigurationError:
    return ConfigurationError(f"connection file {path} is unreadable or damaged: {detail}")


def _info_from(data: Any, path: str) -> ConnectionInfo:
    """The ConnectionInfo ``data`` (parsed JSON) describes; unknown fields are ignored."""
    if not isinstance(data, dict):
        raise _damaged(path, f"expected a JSON object, got {type(data).__name__}")
    values: Dict[str, Any] = {}
    for field in fields(ConnectionInfo):
        if field.name in data:
            values[field.name] = _checked(field.name, data[field.name], path)
        elif field.default is MISSING:
            raise _damaged(path, f"field {field.name!r} is missing")
    return ConnectionInfo(**values)


def _checked(name: str, value: Any, path: str) -> Any:
    """``value`` if it has the type ConnectionInfo declares for ``name`` (a float field takes an int)."""
    allowed = _accepted(_FIELD_TYPES[name])
    if isinstance(value, bool) or not isinstance(value, allowed):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise _damaged(path, f"field {name!r} must be {names}, not {type(value).__name__} ({value!r:.60})")
    if name in _PIDS and value is not None and value <= 0:
        raise _damaged(path, f"field {name!r} must be a pid > 0, not {value}")
    return float(value) if float in allowed and value is not None else value


def _accepted(hint: Any) -> Tuple[type, ...]:
    """The JSON value types a field annotated ``hint`` takes: Optional[X] is X or None; float also int."""
    types = typing.get_args(hint) or (hint,)
    return types + ((int,) if float in types else ())


def remove_connection(path: str, server_id: Optional[str] = None) -> bool:
    """Remove the file if it still belongs to ``server_id`` (without one: if we own it). True if
    removed; never raises for a missing, damaged or refused file."""
    try:
        if server_id is None:
            if os.lstat(path).st_uid != os.geteuid():
                return False
        elif read_connection(path).server_id != server_id:
            return False
        os.unlink(path)
        return True
    except (FileNotFoundError, ConfigurationError):
        return False
