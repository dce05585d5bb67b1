"""ZAP authentication for the server's sockets: only known CURVE keys get in.

Two domains: ``clients`` (executors; trusted keys come from the key directory)
and ``workers`` (the server's own workers; one key made at start-up). Every
denial is logged with the offending public key (public keys are not secret).
"""
from __future__ import annotations

import logging
from typing import Iterable, Set

import zmq
from zmq.auth.thread import ThreadAuthenticator

logger = logging.getLogger(__name__)

CLIENT_DOMAIN = "clients"
WORKER_DOMAIN = "workers"


class _KeySet:
    """ZAP credentials provider: allow exactly these public keys (z85 bytes)."""

    def __init__(self, domain: str, keys: Iterable[bytes]) -> None:
        self.domain = domain
        self.keys: Set[bytes] = set(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        logger.warning("Denied connection in domain %r: CURVE public key %s is not trusted",
                       domain, key.decode(errors="replace"))
        return False


def start_authenticator(context: zmq.Context, client_keys: Iterable[bytes],
                        worker_keys: Iterable[bytes]) -> ThreadAuthenticator:
    """Start the ZAP handler thread for both domains and return it (``stop()`` it at exit)."""
    authenticator = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".zap"))
    authenticator.start()
    authenticator.configure_curve_callback(CLIENT_DOMAIN, _KeySet(CLIENT_DOMAIN, client_keys))
    authenticator.configure_curve_callback(WORKER_DOMAIN, _KeySet(WORKER_DOMAIN, worker_keys))
    return authenticator
