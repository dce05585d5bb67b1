"""The worker side of a server, brought up before the service is imported: workers start first.

A worker spends most of its start-up importing Parsl (for ``execute_task``); so does the
service (``wire/protocol.py``, ``core/spec.py``). ``server/main.py`` therefore builds a
:class:`WorkerSide` from nothing heavier than pyzmq and the backend: the ZAP authenticator,
the worker socket bound, the workers started; only then does it import the service, while
the workers import Parsl. The :class:`~parsl_dragon.server.service.Server` takes the side
over (and brings one up itself when given none, as in unit tests).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import zmq

from parsl_dragon.core.accelerators import as_flag
from parsl_dragon.server.auth import WORKER_DOMAIN, start_authenticator
from parsl_dragon.server.options import ServerOptions
from parsl_dragon.vocabulary import (
    ENV_ACCELERATORS,
    ENV_MAX_PAYLOAD,
    ENV_SERVER_ID,
    ENV_WORKER_ADDRESS,
    ENV_WORKER_SECRET,
    ENV_WORKER_SERVER_KEY,
    LINK_MAX_WIRE_FRAME_BYTES,
)
from parsl_dragon.wire.security import KeyPair, ephemeral_pair, make_curve_server

logger = logging.getLogger(__name__)


def bind_router(context: zmq.Context, domain: str, secret: bytes, host_address: str) -> Tuple[zmq.Socket, int]:
    """A CURVE ROUTER of ZAP ``domain`` on the published address only (not every interface of
    the node): ``ROUTER_MANDATORY`` (nothing vanishes), ``ROUTER_HANDOVER`` (a reconnected link
    resumes its session), frames capped at the protocol's limit. Returns it and its port."""
    sock = context.socket(zmq.ROUTER)
    make_curve_server(sock, secret, domain)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, LINK_MAX_WIRE_FRAME_BYTES)  # vocabulary: no Parsl import for it
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    port = sock.bind_to_random_port(f"tcp://{host_address}")
    return sock, port


def worker_environment(address: str, secret: bytes, server_id: str, block_id: Optional[str]) -> Dict[str, str]:
    """What the server's workers (and every task they run) need to open a worker link to it."""
    return {
        ENV_WORKER_ADDRESS: address,
        ENV_WORKER_SECRET: secret.decode(),
        ENV_WORKER_SERVER_KEY: zmq.curve_public(secret).decode(),
        ENV_SERVER_ID: server_id,
        "PARSL_WORKER_BLOCK_ID": block_id or "",  # Parsl's conventions (monitoring)
        "PARSL_WORKER_POOL_ID": server_id,
    }


@dataclass
class WorkerSide:
    """The server's ZMQ context and identity, its ZAP handler, its worker socket and workers."""

    context: zmq.Context = field(default_factory=zmq.Context)
    keys: KeyPair = field(default_factory=ephemeral_pair)  # the worker socket's, made per server
    server_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    authenticator: Optional[object] = None
    sock: Optional[zmq.Socket] = None
    address: str = ""
    workers: int = 0

    def start(self, options: ServerOptions, backend) -> None:
        """ZAP handler for both domains, worker socket bound, workers started; once (later calls
        do nothing). The client socket is bound later, behind the same ZAP handler."""
        if self.sock is not None:
            return
        self.authenticator = start_authenticator(self.context, options.client_keys, [self.keys.public])
        self.sock, port = bind_router(self.context, WORKER_DOMAIN, self.keys.secret, options.host_address)
        self.address = f"tcp://{options.host_address}:{port}"
        env = worker_environment(self.address, self.keys.secret, self.server_id, options.block_id)
        if options.accelerators is not None:  # the ids the slot table's GPU numbers stand for
            env[ENV_ACCELERATORS] = as_flag(options.accelerators)
        if options.max_payload_bytes is not None:
            env[ENV_MAX_PAYLOAD] = str(options.max_payload_bytes)
        self.workers = backend.start_workers(self.address, env, options.cwd)
        logger.info("Launching %d workers on %s; backend at %s", self.workers, backend.hostnames(), self.address)

    def close(self) -> None:
        """Stop the ZAP handler and close every socket of the context (the workers are the
        backend's to stop, before this)."""
        if self.authenticator is not None:
            self.authenticator.stop()  # type: ignore[attr-defined]
            self.authenticator = None
        self.context.destroy(linger=0)
