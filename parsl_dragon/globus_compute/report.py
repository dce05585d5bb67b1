"""The figures of a DragonEngine's status report (the endpoint's heartbeat), from its executor.

``GlobusComputeEngine`` reports HTEX's managers (one per node); the same keys mean here::

    managers, active_managers   nodes of the connected blocks (of blocks not stopping)
    total_workers, idle_workers persistent workers; those not running a task (server heartbeat)
    pending_tasks               waiting in the engine for a server with room + queued at servers
    outstanding_tasks           submitted and not yet done
    total_tasks                 submitted since start
    blocks                      per block: job, server, host, nodes, workers, running, queued, in flight
    node_info                   per job: one entry per node (host, workers), as GlobusComputeEngine's

``running`` and ``queued`` come from each server's last heartbeat (every ``heartbeat_period``);
before the first one they are estimated from the tasks in flight there.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from parsl_dragon.driver.executor import DragonExecutor
from parsl_dragon.driver.futures import BlockFigures


def global_state(executor: DragonExecutor, block_nodes: int) -> Dict[str, Any]:
    """The ``global_state`` of an ``EPStatusReport`` (JSON-friendly values only)."""
    blocks, waiting, submitted = executor.figures()
    provider = executor.provider
    nodes = sum(len(b.nodes) for b in blocks)
    workers = sum(b.workers for b in blocks)
    running = sum(_running(b) for b in blocks)
    queued = sum(_queued(b) for b in blocks)
    jobs = executor.blocks_to_job_id
    return {
        "managers": nodes,
        "active_managers": nodes,
        "total_workers": workers,
        "idle_workers": max(0, workers - running),
        "pending_tasks": waiting + queued,
        "outstanding_tasks": executor.outstanding(),
        "total_tasks": submitted,
        "scaling_enabled": bool(provider is not None and provider.max_blocks > 0),
        "max_blocks": getattr(provider, "max_blocks", 0),
        "min_blocks": getattr(provider, "min_blocks", 0),
        "nodes_per_block": block_nodes,
        "max_workers_per_node": executor.workers_per_node,
        "prefetch_capacity": executor.prefetch_capacity,
        "pmi": executor.pmi,
        "blocks": {str(b.block_id if b.block_id is not None else b.server_id): _block(b, jobs) for b in blocks},
        "node_info": _node_info(blocks, jobs),
        "provider_type": type(provider).__name__,
        "queue": _first_attribute(provider, ("queue", "partition")),
        "account": _first_attribute(provider, ("account", "allocation", "project")),
    }


def _running(block: BlockFigures) -> int:
    return block.running if block.running is not None else min(block.in_flight, block.workers)


def _queued(block: BlockFigures) -> int:
    return block.queued if block.queued is not None else max(0, block.in_flight - block.workers)


def _block(block: BlockFigures, jobs: Dict[str, Any]) -> Dict[str, Any]:
    return {"job_id": _job(block, jobs), "server_id": block.server_id, "host": block.host, "nodes": list(block.nodes),
            "workers": block.workers, "running": _running(block), "queued": _queued(block),
            "in_flight": block.in_flight}


def _node_info(blocks: List[BlockFigures], jobs: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    info: Dict[str, List[Dict[str, Any]]] = {}
    for block in blocks:
        per_node = block.workers // max(1, len(block.nodes))
        info.setdefault(str(_job(block, jobs)), []).extend(
            {"host": node, "worker_count": per_node, "block_id": block.block_id} for node in block.nodes)
    return info


def _job(block: BlockFigures, jobs: Dict[str, Any]) -> Optional[str]:
    job = jobs.get(block.block_id) if block.block_id is not None else None
    return None if job is None else str(job)


def _first_attribute(provider: Any, names: tuple) -> Optional[str]:
    for name in names:
        value = getattr(provider, name, None)
        if value:
            return str(value)
    return None
