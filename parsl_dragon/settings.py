"""Resolve executor settings: explicit argument > ``PARSL_DRAGON_*`` variable > default.

The seed's semantics are kept: timeouts are milliseconds and ``-1`` means wait
forever; the transport is ``hsta``, ``tcp`` or ``auto``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, TypeVar

from parsl_dragon.errors import ConfigurationError

logger = logging.getLogger(__name__)

T = TypeVar("T")

ENV_SERVER_PATH = "PARSL_DRAGON_SERVER_PATH"
ENV_TRANSPORT = "PARSL_DRAGON_TRANSPORT"
ENV_STARTUP_TIMEOUT = "PARSL_DRAGON_STARTUP_TIMEOUT"
ENV_TIMEOUT = "PARSL_DRAGON_TIMEOUT"
ENV_KEY_PATH = "PARSL_DRAGON_KEY_PATH"
ENV_RANK_STARTUP_TIMEOUT = "PARSL_DRAGON_RANK_STARTUP_TIMEOUT"
ENV_OWNER_TIMEOUT = "PARSL_DRAGON_OWNER_TIMEOUT"

DEFAULT_STARTUP_TIMEOUT_MS = 300_000
DEFAULT_TIMEOUT_MS = 30_000
# Base time for an MPI task's ranks to start (the server adds RANK_STARTUP_MS_PER_RANK per
# rank): ProcessGroup start-up grows with the rank count and the node count.
DEFAULT_RANK_STARTUP_TIMEOUT_MS = 60_000
RANK_STARTUP_MS_PER_RANK = 10
# Time a block's server waits, once it has published its connection file, for its driver to
# connect; then it stops, so a block whose driver died during start-up does not hold the
# allocation (the driver's watcher connects within a second of the file appearing).
DEFAULT_OWNER_TIMEOUT_MS = 60_000
TRANSPORTS = ("hsta", "tcp", "auto")
DEFAULT_TRANSPORT = "auto"


def default_key_path() -> str:
    """Where keys live when nothing else is said: ``~/.parsl_dragon/keys``."""
    return os.path.join(os.path.expanduser("~"), ".parsl_dragon", "keys")


def parse_timeout_ms(value: object, name: str) -> int:
    """A timeout in ms: a positive integer, or ``-1`` for "wait forever"."""
    try:
        ms = int(str(value).strip())
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be an integer number of milliseconds or -1, got {value!r}") from exc
    if ms == -1 or ms > 0:
        return ms
    raise ConfigurationError(f"{name} must be > 0 (milliseconds) or -1 (wait forever), got {ms}")


def parse_transport(value: object, name: str) -> str:
    """One of ``hsta``, ``tcp``, ``auto`` (case-insensitive)."""
    transport = str(value).strip().lower()
    if transport not in TRANSPORTS:
        raise ConfigurationError(f"{name} must be one of {', '.join(TRANSPORTS)}; got {value!r}")
    return transport


def _resolve(arg: Optional[T], env: Mapping[str, str], var: str, default: T,
             parse: Callable[[object, str], T], arg_name: str) -> T:
    if arg is not None:
        return parse(arg, "argument " + arg_name)
    if env.get(var, "").strip():
        return parse(env[var], "environment variable " + var)
    return default


def _path(value: object, name: str) -> str:
    text = os.path.expanduser(str(value).strip())
    if not text:
        raise ConfigurationError(f"{name} must be a non-empty path")
    return os.path.abspath(text)


def _seconds(ms: int) -> Optional[float]:
    """A timeout in ms as seconds; ``-1`` (wait forever) as ``None``."""
    return None if ms == -1 else ms / 1000.0


@dataclass(frozen=True)
class Settings:
    """Effective settings of one executor, after precedence is applied."""

    server_path: Optional[str]
    transport: str
    startup_timeout_ms: int
    timeout_ms: int
    key_path: str
    rank_startup_timeout_ms: int = DEFAULT_RANK_STARTUP_TIMEOUT_MS
    owner_timeout_ms: int = DEFAULT_OWNER_TIMEOUT_MS

    @property
    def timeout_s(self) -> Optional[float]:
        """``timeout_ms`` in seconds; ``None`` means wait forever."""
        return _seconds(self.timeout_ms)

    @property
    def startup_timeout_s(self) -> Optional[float]:
        """``startup_timeout_ms`` in seconds; ``None`` means wait forever."""
        return _seconds(self.startup_timeout_ms)

    @property
    def rank_startup_timeout_s(self) -> Optional[float]:
        """``rank_startup_timeout_ms`` in seconds; ``None`` means wait forever."""
        return _seconds(self.rank_startup_timeout_ms)

    @property
    def owner_timeout_s(self) -> Optional[float]:
        """``owner_timeout_ms`` in seconds; ``None`` means wait forever."""
        return _seconds(self.owner_timeout_ms)


def resolve_settings(*, server_path: Optional[str] = None, transport: Optional[str] = None,
                     startup_timeout_ms: Optional[int] = None, timeout_ms: Optional[int] = None,
                     key_path: Optional[str] = None, rank_startup_timeout_ms: Optional[int] = None,
                     owner_timeout_ms: Optional[int] = None,
                     env: Optional[Mapping[str, str]] = None) -> Settings:
    """Apply argument > environment > default to every setting and validate each one."""
    env = os.environ if env is None else env
    settings = Settings(
        server_path=_resolve(server_path, env, ENV_SERVER_PATH, None, _path, "server_path"),
        transport=_resolve(transport, env, ENV_TRANSPORT, DEFAULT_TRANSPORT, parse_transport, "transport"),
        startup_timeout_ms=_resolve(startup_timeout_ms, env, ENV_STARTUP_TIMEOUT,
                                    DEFAULT_STARTUP_TIMEOUT_MS, parse_timeout_ms, "startup_timeout_ms"),
        timeout_ms=_resolve(timeout_ms, env, ENV_TIMEOUT, DEFAULT_TIMEOUT_MS, parse_timeout_ms, "timeout_ms"),
        key_path=_resolve(key_path, env, ENV_KEY_PATH, default_key_path(), _path, "key_path"),
        rank_startup_timeout_ms=_resolve(rank_startup_timeout_ms, env, ENV_RANK_STARTUP_TIMEOUT,
                                         DEFAULT_RANK_STARTUP_TIMEOUT_MS, parse_timeout_ms,
                                         "rank_startup_timeout_ms"),
        owner_timeout_ms=_resolve(owner_timeout_ms, env, ENV_OWNER_TIMEOUT, DEFAULT_OWNER_TIMEOUT_MS,
                                  parse_timeout_ms, "owner_timeout_ms"),
    )
    logger.debug("Resolved settings: %s", settings)
    return settings
