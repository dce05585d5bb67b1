"""A backend whose nodes and workers are simulated: for ``benchmarks/scale.py`` only.

``python -m parsl_dragon.server.main ... --simulated-nodes N`` runs the real server (inside a
real Dragon runtime, with its real sockets, ZAP and CURVE) over ``N`` made-up nodes
(``simnode-00000`` ...) of ``--cores-per-node`` cores, and starts no worker process. It
writes what a worker needs to open its link (the variables a real worker inherits, the node
names, workers per node) to ``simulated-workers.json`` (0600) in the block directory, so that
a benchmark can connect thousands of simulated workers that speak the real worker protocol
(``WorkerReady``, ``TaskResults``) from a few processes. Nothing else reads that file.

The slot table, the scheduler, the links and the service are the production ones; only the
processes behind the worker links are not. Workers never die here (:meth:`dead_workers` is
empty) and rank launches are refused.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Callable, Dict, List, Optional, Tuple

from parsl_dragon.server.backend import NodeInfo, RankJob, RankOutcome, default_workers
from parsl_dragon.vocabulary import ENV_SERVER_ID, WORKER_LINK_VARS

logger = logging.getLogger(__name__)

LINK_FILE = "simulated-workers.json"
NODE_PREFIX = "simnode-"
DEFAULT_CORES = 64  # cores per simulated node when ``--cores-per-node`` is not given
RANKS_REFUSED = "a server over simulated nodes launches no ranks"


def hostnames(nodes: int) -> List[str]:
    """The names of ``nodes`` simulated nodes, in order."""
    return [f"{NODE_PREFIX}{index:05d}" for index in range(nodes)]


class SimulatedBackend:
    """The :class:`~parsl_dragon.server.backend.DragonBackend` interface over made-up nodes:
    ``nodes`` of ``cores`` cores, ``workers_per_node`` workers each (default cores - 1),
    none of them a process. ``block_dir`` receives :data:`LINK_FILE`."""

    def __init__(self, nodes: int, block_dir: str, cores: Optional[int] = None,
                 workers_per_node: Optional[int] = None) -> None:
        if nodes < 1:
            raise ValueError(f"--simulated-nodes must be >= 1, got {nodes}")
        self.cores = cores or DEFAULT_CORES
        self.workers_per_node = workers_per_node or default_workers(self.cores)
        self.block_dir = block_dir
        self._nodes = [NodeInfo(name, self.cores, 0) for name in hostnames(nodes)]
        self._expected = 0

    def nodes(self) -> List[NodeInfo]:
        return self._nodes

    def hostnames(self) -> List[str]:
        return [n.hostname for n in self._nodes]

    def expected_workers(self) -> int:
        return self._expected

    def start_workers(self, address: str, env: Dict[str, str], cwd: str) -> int:
        """Write the link file instead of starting processes; the number of simulated workers."""
        self._expected = self.workers_per_node * len(self._nodes)
        link = {"address": address, "env": {k: env[k] for k in (*WORKER_LINK_VARS, ENV_SERVER_ID) if k in env},
                "nodes": self.hostnames(), "workers_per_node": self.workers_per_node}
        path = os.path.join(self.block_dir, LINK_FILE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(link, handle)
        logger.info("Simulated backend: %d nodes x %d workers, no processes; worker link in %s",
                    len(self._nodes), self.workers_per_node, path)
        return self._expected

    def dead_workers(self, replace: Callable[[], bool] = lambda: True) -> List[Tuple[int, int]]:
        return []

    def run_ranks(self, job: RankJob, on_started: Optional[Callable[[], None]] = None,
                  cancel: Optional[threading.Event] = None) -> RankOutcome:
        return RankOutcome([], [], error=RANKS_REFUSED)

    def stop(self, patience: float = 2.0) -> None:
        """Nothing to stop: the server tells the simulated workers ``StopWorker`` itself."""
