"""The only module that imports ``dragon``: node discovery and worker processes.

Workers are persistent Python processes in one Dragon ``ProcessGroup`` with
``restart=True``: Dragon replaces a worker that dies, and the server learns of
the death through :meth:`DragonBackend.dead_workers` (polled from the server's
single thread, because a ProcessGroup client object is not thread-safe).
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    hostname: str
    cpus: int
    gpus: int


def _import_dragon():
    try:
        from dragon.infrastructure.policy import Policy
        from dragon.native.machine import Node, System
        from dragon.native.process import ProcessTemplate
        from dragon.native.process_group import ProcessGroup
    except ImportError as exc:  # pragma: no cover - the server only runs inside dragon
        raise RuntimeError("the Dragon server needs the 'dragonhpc' package (pip install dragonhpc)") from exc
    return Policy, Node, System, ProcessTemplate, ProcessGroup


def default_workers(cpus: int) -> int:
    """Leave one core to Dragon's busy-polling infrastructure: max(1, cpus - 1)."""
    return max(1, cpus - 1)


class DragonBackend:
    """Starts, watches and stops the worker processes of one server."""

    def __init__(self, workers_per_node: Optional[int] = None) -> None:
        self.workers_per_node = workers_per_node
        self._dragon = _import_dragon()
        self._group = None
        self._nodes: List[NodeInfo] = []
        self._reported: Set[int] = set()
        self._expected = 0

    def nodes(self) -> List[NodeInfo]:
        if not self._nodes:
            _, Node, System, _, _ = self._dragon
            for h_uid in System().nodes:
                node = Node(h_uid)
                self._nodes.append(NodeInfo(node.hostname, node.num_cpus, node.num_gpus))
        return self._nodes

    def hostnames(self) -> List[str]:
        return [n.hostname for n in self.nodes()]

    def expected_workers(self) -> int:
        return self._expected

    def start_workers(self, address: str, env: Dict[str, str], cwd: str) -> int:
        """Launch the worker group: ``workers_per_node`` per node (default cpus - 1)."""
        Policy, _, _, ProcessTemplate, ProcessGroup = self._dragon
        group = ProcessGroup(restart=True, ignore_error_on_exit=True)
        worker_env = dict(os.environ, **env)
        for node in self.nodes():
            count = self.workers_per_node or default_workers(node.cpus)
            policy = Policy(placement=Policy.Placement.HOST_NAME, host_name=node.hostname)
            template = ProcessTemplate(
                target=sys.executable, args=["-m", "parsl_dragon.server.worker", node.hostname],
                cwd=cwd, env=worker_env, policy=policy)
            group.add_process(nproc=count, template=template)
            self._expected += count
        group.init()
        group.start()
        self._group = group
        return self._expected

    def dead_workers(self) -> List[Tuple[int, int]]:
        """(puid, exit code) of workers that died since the last call."""
        if self._group is None:
            return []
        try:
            inactive = self._group.inactive_puids
        except Exception as exc:  # dragon raises several unrelated types here
            logger.warning("Could not query the worker group: %s", exc)
            return []
        fresh = [(puid, code) for puid, code in inactive if puid not in self._reported]
        self._reported.update(puid for puid, _ in fresh)
        return fresh

    def stop(self, patience: float = 2.0) -> None:
        """Stop restarting, let workers exit, then stop and close the group."""
        group, self._group = self._group, None
        if group is None:
            return
        try:
            group.stop_restart()
            group.join(timeout=patience)
        except Exception as exc:
            logger.info("Workers did not all exit within %.1fs (%s); stopping them", patience, exc)
        try:
            group.stop(patience=patience)
        except Exception as exc:
            logger.debug("group.stop: %s", exc)
        try:
            group.close(patience=patience)
        except Exception as exc:
            logger.warning("Closing the worker group failed: %s", exc)
