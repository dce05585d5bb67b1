"""The server's settings: what ``server/main.py`` parses from the command line for the service."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import List, Optional

from parsl_dragon.core.accelerators import Accelerators, gpu_count
from parsl_dragon.host.memory import default_kept_results_memory
from parsl_dragon.vocabulary import (
    DEFAULT_HEARTBEAT_PERIOD_S,
    DEFAULT_HEARTBEAT_THRESHOLD,
    DEFAULT_OWNER_TIMEOUT_MS,
    DEFAULT_RANK_STARTUP_TIMEOUT_MS,
    LOOPBACK,
)
from parsl_dragon.wire.security import KeyPair


@dataclass
class ServerOptions:
    """Everything one block's server needs; timeouts in milliseconds, ``-1`` (NO_LIMIT) for none."""

    connection_file: str
    log_path: str
    server_keys: KeyPair
    client_keys: List[bytes]
    host_address: str = LOOPBACK
    cores_per_node: Optional[int] = None
    accelerators: Optional[Accelerators] = None  # available_accelerators; None: Dragon's count per node
    max_payload_bytes: Optional[int] = None  # the largest result a worker sends; None: the worker's default
    keep_results_over: Optional[int] = None  # results this large (serialized) stay in the block; None: asked only
    kept_results_memory: int = field(default_factory=default_kept_results_memory)  # per node, for kept results
    driver_host: Optional[str] = None  # the node the driver runs on (a block in its job): one core kept for it
    heartbeat_period: float = DEFAULT_HEARTBEAT_PERIOD_S
    heartbeat_threshold: int = DEFAULT_HEARTBEAT_THRESHOLD
    owner_timeout_ms: int = DEFAULT_OWNER_TIMEOUT_MS
    job_id: Optional[str] = None
    block_id: Optional[str] = None
    launch_id: Optional[str] = None
    launcher_pid: Optional[int] = None
    rank_startup_timeout_ms: int = DEFAULT_RANK_STARTUP_TIMEOUT_MS  # plus a per-rank allowance
    cwd: str = field(default_factory=os.getcwd)

    def cores_of(self, hostname: str, cpus: int) -> int:
        """Cores the slot table counts on ``hostname``: ``cores_per_node`` (else what Dragon
        reports), less one on the driver's node when the block runs in the driver's job."""
        cores = self.cores_per_node or cpus
        return max(1, cores - 1) if self.is_driver_host(hostname) else cores

    def gpus_of(self, reported: int) -> int:
        """GPU slots the slot table counts on a node for which Dragon reported ``reported``."""
        return gpu_count(self.accelerators, reported)

    def is_driver_host(self, hostname: str) -> bool:
        """Whether Dragon's node ``hostname`` is the driver's (a one-node runtime calls its node
        ``localhost``: then it is the server's own)."""
        if self.driver_host is None:
            return False
        if hostname == "localhost":
            hostname = socket.gethostname()
        return hostname.split(".")[0] == self.driver_host.split(".")[0]

    @property
    def lease_seconds(self) -> float:
        """How long a peer may stay silent (clients) or unreachable (workers) before it is lost."""
        return self.heartbeat_period * self.heartbeat_threshold
