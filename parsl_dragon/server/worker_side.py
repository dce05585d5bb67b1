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
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import zmq

from parsl_dragon.core.accelerators import as_flag
from parsl_dragon.host import local_sockets
from parsl_dragon.server.auth import CLIENT_DOMAIN, WORKER_DOMAIN, start_authenticator
from parsl_dragon.server.options import ServerOptions
from parsl_dragon.vocabulary import (
    ENV_ACCELERATORS,
    ENV_MAX_PAYLOAD,
    ENV_SERVER_HOST,
    ENV_SERVER_ID,
    ENV_WORKER_ADDRESS,
    ENV_WORKER_LOCAL_ADDRESS,
    ENV_WORKER_SECRET,
    ENV_WORKER_SERVER_KEY,
    LINK_MAX_WIRE_FRAME_BYTES,
)
from parsl_dragon.wire.security import KeyPair, ephemeral_pair, make_curve_server

logger = logging.getLogger(__name__)


# Connections the kernel queues for accept (the kernel caps it at net.core.somaxconn, 4096 by default).
# libzmq's default, 100, made 10,000 workers connecting at once overflow the queue 56,248 times and
# wait out SYN retries: 34 s to register them, 7.7 s with 4,096 (benchmarks/scale.py).
LISTEN_BACKLOG = 65535


def bind_router(context: zmq.Context, domain: str, secret: bytes, host_address: str) -> Tuple[zmq.Socket, int]:
    """A CURVE ROUTER of ZAP ``domain`` on the published address only (not every interface of
    the node): ``ROUTER_MANDATORY`` (nothing vanishes), ``ROUTER_HANDOVER`` (a reconnected link
    resumes its session), frames capped at the protocol's limit, a long accept queue
    (:data:`LISTEN_BACKLOG`). Returns it and its port."""
    sock = context.socket(zmq.ROUTER)
    make_curve_server(sock, secret, domain)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, LINK_MAX_WIRE_FRAME_BYTES)  # vocabulary: no Parsl import for it
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
    port = sock.bind_to_random_port(f"tcp://{host_address}")
    return sock, port


def bind_local_router(context: zmq.Context, address: str) -> zmq.Socket:
    """A ROUTER on a Unix socket in a private directory (``host/local_sockets.py``): no CURVE,
    the directory's permissions are the guard; otherwise as :func:`bind_router`."""
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, LINK_MAX_WIRE_FRAME_BYTES)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.bind(address)
    return sock


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
    local_sock: Optional[zmq.Socket] = None  # the same-host workers' Unix socket, if enabled
    socket_dir: Optional[str] = None  # where the block's Unix sockets are
    block_dir: str = ""
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
        env.update(self._bind_local(options))
        if options.accelerators is not None:  # the ids the slot table's GPU numbers stand for
            env[ENV_ACCELERATORS] = as_flag(options.accelerators)
        if options.max_payload_bytes is not None:
            env[ENV_MAX_PAYLOAD] = str(options.max_payload_bytes)
        self.workers = backend.start_workers(self.address, env, options.cwd)
        logger.info("Launching %d workers on %s; backend at %s", self.workers, backend.hostnames(), self.address)

    def bind_clients(self, options: ServerOptions) -> Tuple[zmq.Socket, int, Optional[zmq.Socket], Optional[str]]:
        """The clients' sockets: TCP + CURVE (and its port), and a Unix socket for a driver on
        this host (None, None if turned off or impossible) with its address."""
        sock, port = bind_router(self.context, CLIENT_DOMAIN, options.server_keys.secret, options.host_address)
        if self.socket_dir is None:
            return sock, port, None, None
        address = local_sockets.address(self.socket_dir, "clients.sock")
        try:
            return sock, port, bind_local_router(self.context, address), address
        except zmq.ZMQError as exc:
            logger.warning("No same-host client socket (%s): clients use TCP + CURVE", exc)
            return sock, port, None, None

    def _bind_local(self, options: ServerOptions) -> Dict[str, str]:
        """The workers' Unix socket, for those on this host (none if turned off or impossible)."""
        if not local_sockets.enabled(os.environ):
            return {}
        self.block_dir = os.path.dirname(options.log_path)
        try:
            self.socket_dir = local_sockets.socket_directory(self.block_dir)
            address = local_sockets.address(self.socket_dir, "workers.sock")
            self.local_sock = bind_local_router(self.context, address)
        except (OSError, zmq.ZMQError) as exc:
            logger.warning("No same-host worker socket (%s): every worker link uses TCP + CURVE", exc)
            return {}
        logger.info("Workers on %s connect at %s", socket.gethostname(), address)
        return {ENV_WORKER_LOCAL_ADDRESS: address, ENV_SERVER_HOST: socket.gethostname()}

    def close(self) -> None:
        """Stop the ZAP handler and close every socket of the context (the workers are the
        backend's to stop, before this); the Unix sockets' files go too."""
        if self.authenticator is not None:
            self.authenticator.stop()  # type: ignore[attr-defined]
            self.authenticator = None
        self.context.destroy(linger=0)
        if self.socket_dir is not None:
            local_sockets.remove(self.block_dir, self.socket_dir)
