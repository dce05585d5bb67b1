"""The one error tree of parsl-dragon.

Every error this package raises on purpose derives from Parsl's ``ExecutorError``
(so Parsl's own handling applies) through :class:`DragonExecutorError`::

    ExecutorError (parsl)
     └── DragonExecutorError
          ├── ConfigurationError        bad argument / environment value / launcher
          │    └── InsecurePath         a file or directory that others own or can write
          │         └── InsecureKeyPath key directory or secret file too open
          ├── ServerStartupError        block never produced a live server (says where the log is)
          ├── ServerCapacityError       a server cannot hold its workers' links (file descriptors,
          │                             memory): names the limit and the setting to change
          ├── ServerConnectionError     cannot talk to a server
          │    ├── AuthenticationFailed server rejected this client's CURVE key
          │    ├── HandshakeTimeout     no reply within ``timeout_ms``
          │    └── VersionMismatch      protocol / Parsl / Python versions differ
          ├── ServerLost                server stopped answering (retryable: resubmit)
          ├── WorkerLost                a worker died while running the task
          ├── TaskLost                  lost in flight when a link dropped and came back (retryable)
          ├── PayloadTooLarge           arguments or result over max_payload_bytes
          ├── ResultLost                a kept result is gone (its block was lost, or it was evicted)
          └── ProtocolError             malformed or unknown message (also a ValueError)

``RankFailure`` is the exception of an MPI bash app whose ranks failed; it derives from
Parsl's ``BashExitFailure`` (not from the tree above) so existing handlers keep working.

Foreign exceptions (zmq, dragon, OS) are converted where they cross into this
package, with ``raise Ours(...) from exc``.

Errors on the wire: a ``TaskResult`` with status FAILED names its error by a string,
``error_type``. The strings are the constants below (the class name where there is a
class), and :func:`failure` turns one back into the exception a task's future gets::

    error_type                     written by               future's exception
    SERVER_LOST                    service, client          ServerLost
    WORKER_LOST                    service                  WorkerLost
    TASK_LOST                      worker, client           TaskLost
    PAYLOAD_TOO_LARGE              worker                   PayloadTooLarge
    SERIALIZATION_ERROR            worker                   DragonExecutorError
    INVALID_RESOURCE_SPECIFICATION service                  Parsl's InvalidResourceSpecification
    anything else                                           DragonExecutorError
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from parsl.app.errors import BashExitFailure
from parsl.executors.errors import ExecutorError, InvalidResourceSpecification


class DragonExecutorError(ExecutorError):
    """Base of every parsl-dragon error; carries a plain message."""

    def __init__(self, message: str, executor: Optional[object] = None) -> None:
        super().__init__(executor, message)  # type: ignore[arg-type]
        self.message = message

    def __str__(self) -> str:
        label = getattr(self.executor, "label", None)
        return f"[{label}] {self.message}" if label else self.message

    def __reduce__(self):  # picklable without the executor (crosses process boundaries)
        return (type(self), (self.message,))


class ConfigurationError(DragonExecutorError):
    """A configuration value (argument, environment variable, launcher) is invalid."""


class InsecurePath(ConfigurationError):
    """A file or directory that others own or can write (or a symlink, FIFO, ... where a
    plain file or directory belongs): what it holds could be forged, so it is not used."""


class InsecureKeyPath(InsecurePath):
    """A key directory is not 0700 or a secret key file is not 0600."""


class ServerStartupError(DragonExecutorError):
    """A block did not produce a live Dragon server within the start-up timeout."""


class ServerCapacityError(DragonExecutorError):
    """A block's server cannot hold the links of the workers it would start: they need more file
    descriptors than its ``RLIMIT_NOFILE`` allows, or more memory than its node has available.
    Raised in the server before any worker starts (``server/limits.py``); the message names the
    numbers and what to change (``ulimit -n``, ``workers_per_node``)."""


class ServerConnectionError(DragonExecutorError):
    """The client could not establish or keep a session with a server."""


class AuthenticationFailed(ServerConnectionError):
    """The server's ZAP handler refused this client's CURVE public key."""


class HandshakeTimeout(ServerConnectionError):
    """The server did not answer the handshake within ``timeout_ms``."""


class VersionMismatch(ServerConnectionError):
    """Client and server disagree on protocol, Parsl or Python version."""


class ServerLost(DragonExecutorError):
    """The server stopped answering while tasks were outstanding; resubmitting is safe."""


class WorkerLost(DragonExecutorError):
    """The worker process running a task died before returning a result."""


class TaskLost(DragonExecutorError):
    """The task was lost in flight when its link to the server dropped and came back; the
    server never ran it or its result never arrived (retryable: resubmit)."""


class PayloadTooLarge(DragonExecutorError):
    """A task's arguments or result are larger than ``max_payload_bytes`` (a quarter of the
    driver host's memory by default); the error names both sizes. Only that task fails."""


class ResultLost(DragonExecutorError):
    """A result kept in its block (``keep_result``) cannot be read: the block that holds it was
    lost or stopped, or the result was evicted. Names the task that produced it."""


class ProtocolError(DragonExecutorError, ValueError):
    """A frame could not be decoded, or names an unknown version or message type."""


class RankFailure(BashExitFailure):
    """Ranks of an MPI bash app exited with errors; names each failing rank and its code.

    A ``BashExitFailure`` (so ``except BashExitFailure`` keeps working) carrying
    ``failed`` = [(label, exit code), ...].
    """

    def __init__(self, app_name: str, exitcode: int, failed: List[Tuple[str, int]], error: str = "") -> None:
        super().__init__(app_name, exitcode)
        self.failed = [(str(label), int(code)) for label, code in failed]
        self.error = error

    def __str__(self) -> str:
        what = "; ".join([f"{label} exited with {code}" for label, code in self.failed]
                         + ([f"ranks not launched: {self.error}"] if self.error else []))
        return f"bash_app {self.app_name} failed with exit code {self.exitcode}: {what}"

    def __reduce__(self):
        return (type(self), (self.app_name, self.exitcode, self.failed, self.error))


# ---- error types on the wire (TaskResult.error_type) -------------------------
SERVER_LOST = ServerLost.__name__
WORKER_LOST = WorkerLost.__name__
TASK_LOST = TaskLost.__name__
PAYLOAD_TOO_LARGE = PayloadTooLarge.__name__
SERIALIZATION_ERROR = "SerializationError"  # a task's exception could not be serialized: no class of its own
INVALID_RESOURCE_SPECIFICATION = InvalidResourceSpecification.__name__  # Parsl's

_WIRE_ERRORS: Dict[str, Callable[[str], BaseException]] = {
    SERVER_LOST: ServerLost,
    WORKER_LOST: WorkerLost,
    TASK_LOST: TaskLost,
    PAYLOAD_TOO_LARGE: PayloadTooLarge,
    SERIALIZATION_ERROR: DragonExecutorError,
    INVALID_RESOURCE_SPECIFICATION: lambda message: InvalidResourceSpecification(set(), message),
}


def failure(error_type: str, message: str) -> BaseException:
    """The exception for a task that failed with wire error ``error_type``; an unknown type
    becomes a plain :class:`DragonExecutorError`. ``message`` is kept as it is."""
    return _WIRE_ERRORS.get(error_type, DragonExecutorError)(message)
