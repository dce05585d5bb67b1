"""Talking to servers for ``parsl-dragon``: one short-lived client, a handshake, then Goodbye or Shutdown.

The client uses this user's client key (``--key-path`` > ``$PARSL_DRAGON_KEY_PATH`` >
``~/.parsl_dragon/keys``, as the executor) and connects as a non-owner, so a handshake alone
never changes what the server does.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import zmq

from parsl_dragon.cli.block import wait_until
from parsl_dragon.driver.client import DragonClient
from parsl_dragon.driver.settings import resolve_settings
from parsl_dragon.errors import ConfigurationError, DragonExecutorError, HandshakeTimeout, ServerConnectionError
from parsl_dragon.vocabulary import ENV_KEY_PATH
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire import security
from parsl_dragon.wire.connection import ConnectionInfo

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 3.0


def client_key_path(arg: Optional[str]) -> str:
    """--key-path > PARSL_DRAGON_KEY_PATH > ~/.parsl_dragon/keys."""
    return resolve_settings(key_path=arg, env={ENV_KEY_PATH: os.environ.get(ENV_KEY_PATH, "")}).key_path


class Sessions:
    """One short-lived client per command, made on first use; a key problem is remembered."""

    def __init__(self, key_path: str, timeout_s: float) -> None:
        self.key_path, self.timeout_s = key_path, timeout_s
        self._client: Optional[DragonClient] = None
        self._error: Optional[ConfigurationError] = None

    def _get(self) -> DragonClient:
        if self._error is not None:
            raise self._error
        if self._client is None:
            try:
                if not os.path.isdir(self.key_path):
                    raise ConfigurationError(f"key directory {self.key_path} does not exist "
                                             "(--key-path / PARSL_DRAGON_KEY_PATH)")
                keys = security.load_pair(self.key_path, security.CLIENT, create=False)
            except ConfigurationError as exc:
                self._error = exc
                raise
            self._client = DragonClient(keys, timeout_s=self.timeout_s, heartbeat_period=3600.0,
                                        heartbeat_threshold=1000, on_results=_ignore,
                                        on_monitoring=_ignore, on_server_lost=_ignore)
            self._client.start()
        return self._client

    def handshake(self, info: ConnectionInfo, shutdown_reason: str = "") -> str:
        """Handshake with the server ``info`` names, leave with Shutdown (if asked and it is that
        server) or Goodbye; return the id of the server that answered."""
        client = self._get()
        try:
            link = client.connect(info, owner=False)
        except (zmq.ZMQError, ValueError) as exc:
            raise ServerConnectionError(f"cannot connect to {info.address}: {exc}") from exc
        same = link.server_id == info.server_id
        logger.debug("Server %s at %s answered as %s", info.server_id, info.address, link.server_id)
        client.disconnect(link.server_id, p.Shutdown(reason=shutdown_reason) if shutdown_reason and same
                          else p.Goodbye())
        wait_until(lambda: link.socket.closed, 5.0, 0.01)  # the I/O thread sends, then closes it
        return link.server_id

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _ignore(*_args: object) -> None:
    pass


def why(exc: DragonExecutorError, info: ConnectionInfo, sessions: Sessions) -> str:
    """The error as one line; a handshake timeout names this command's option, not the executor's."""
    if isinstance(exc, HandshakeTimeout):
        return f"no answer from {info.address} within {sessions.timeout_s:.1f}s (--timeout)"
    return exc.message
