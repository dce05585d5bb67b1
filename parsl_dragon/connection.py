"""The connection file: how a driver finds, shares and tears down a server.

One JSON file per server, written atomically (temporary file + rename) with
mode 0600. Fields::

    {"protocol": 1, "address": "tcp://10.0.0.5:50123", "server_public_key": "<z85>",
     "host": "nid0001", "pid": 4242, "launcher_pid": 4200, "job_id": "1234",
     "block_id": "0", "server_id": "<uuid hex>", "created": 1732435200.0,
     "log_path": "/.../server.log", "block_token": "<uuid hex>"}

``launcher_pid`` is the block's boot process, which owns the runtime (teardown
escalates to it); every process of the block carries ``block_token`` in its
environment as ``PARSL_DRAGON_BLOCK_TOKEN``, so teardown can find them even when
the boot process is gone, and never touches a process without it. A file whose server no longer answers is
stale; teardown removes it.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import asdict, dataclass, fields
from typing import Optional

from parsl_dragon.errors import ConfigurationError

CONNECTION_FILE = "connection.json"


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


def connection_path(directory: str) -> str:
    """The connection file's path inside a server directory."""
    return os.path.join(directory, CONNECTION_FILE)


def write_connection(path: str, info: ConnectionInfo) -> None:
    """Write ``info`` to ``path`` atomically with mode 0600."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".connection-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(info), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_connection(path: str) -> ConnectionInfo:
    """Read a connection file; a damaged one raises :class:`ConfigurationError`."""
    try:
        with open(path) as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(ConnectionInfo)}
        return ConnectionInfo(**{k: v for k, v in data.items() if k in known})
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"connection file {path} is unreadable or damaged: {exc}") from exc


def remove_connection(path: str, server_id: Optional[str] = None) -> bool:
    """Remove the file if it still belongs to ``server_id`` (or unconditionally). True if removed."""
    try:
        if server_id is not None and read_connection(path).server_id != server_id:
            return False
        os.unlink(path)
        return True
    except (FileNotFoundError, ConfigurationError):
        return False
