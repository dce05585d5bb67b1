"""Resolve executor settings: explicit argument > ``PARSL_DRAGON_*`` variable > default.

Names, defaults and parsers come from :mod:`parsl_dragon.vocabulary`: timeouts are
milliseconds and ``-1`` means no limit; the transport is ``hsta``, ``tcp`` or ``auto``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, TypeVar

from parsl_dragon.errors import ConfigurationError
from parsl_dragon.host.memory import default_max_payload_bytes
from parsl_dragon.vocabulary import (
    DEFAULT_OWNER_TIMEOUT_MS,
    DEFAULT_RANK_STARTUP_TIMEOUT_MS,
    DEFAULT_STARTUP_TIMEOUT_MS,
    DEFAULT_TIMEOUT_MS,
    DEFAULT_TRANSPORT,
    ENV_KEEP_RESULTS_OVER,
    ENV_KEPT_RESULTS_MEMORY,
    ENV_KEY_PATH,
    ENV_MAX_PAYLOAD,
    ENV_OWNER_TIMEOUT,
    ENV_RANK_STARTUP_TIMEOUT,
    ENV_SERVER_PATH,
    ENV_STARTUP_TIMEOUT,
    ENV_TIMEOUT,
    ENV_TRANSPORT,
    parse_bytes,
    parse_pmi,
    parse_timeout_ms,
    parse_transport,
    timeout_seconds,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


def check_arguments(*, workers_per_node: Optional[int], cores_per_node: Optional[int], pmi: str,
                    heartbeat_period: float, heartbeat_threshold: int, prefetch_capacity: int) -> None:
    """Refuse DragonExecutor arguments that cannot work, naming them (at construction, before I/O)."""
    if workers_per_node is not None and workers_per_node < 1:
        raise ConfigurationError(f"workers_per_node must be >= 1, got {workers_per_node}")
    if cores_per_node is not None and cores_per_node < 1:
        raise ConfigurationError(f"cores_per_node must be >= 1, got {cores_per_node}")
    parse_pmi(pmi, "pmi")
    if heartbeat_period <= 0 or heartbeat_threshold < 1:
        raise ConfigurationError("heartbeat_period must be > 0 and heartbeat_threshold >= 1")
    if prefetch_capacity < 0:
        raise ConfigurationError(f"prefetch_capacity must be >= 0, got {prefetch_capacity}")


def default_key_path() -> str:
    """Where keys live when nothing else is said: ``~/.parsl_dragon/keys``."""
    return os.path.join(os.path.expanduser("~"), ".parsl_dragon", "keys")


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
    max_payload_bytes: int = field(default_factory=default_max_payload_bytes)
    keep_results_over: Optional[int] = None  # None: only tasks that ask (keep_result) keep theirs
    kept_results_memory: Optional[int] = None  # None: the block's nodes choose (host/memory.py)

    @property
    def timeout_s(self) -> Optional[float]:
        """``timeout_ms`` in seconds; ``None`` means wait forever."""
        return timeout_seconds(self.timeout_ms)

    @property
    def startup_timeout_s(self) -> Optional[float]:
        """``startup_timeout_ms`` in seconds; ``None`` means wait forever."""
        return timeout_seconds(self.startup_timeout_ms)


def resolve_settings(*, server_path: Optional[str] = None, transport: Optional[str] = None,
                     startup_timeout_ms: Optional[int] = None, timeout_ms: Optional[int] = None,
                     key_path: Optional[str] = None, rank_startup_timeout_ms: Optional[int] = None,
                     owner_timeout_ms: Optional[int] = None, max_payload_bytes: Optional[int] = None,
                     keep_results_over: Optional[int] = None, kept_results_memory: Optional[int] = None,
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
        max_payload_bytes=_resolve(max_payload_bytes, env, ENV_MAX_PAYLOAD, default_max_payload_bytes(), parse_bytes,
                                   "max_payload_bytes"),
        keep_results_over=_resolve(keep_results_over, env, ENV_KEEP_RESULTS_OVER, None, parse_bytes,
                                   "keep_results_over"),
        kept_results_memory=_resolve(kept_results_memory, env, ENV_KEPT_RESULTS_MEMORY, None, parse_bytes,
                                     "kept_results_memory"),
    )
    logger.debug("Resolved settings: %s", settings)
    return settings
