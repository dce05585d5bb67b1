"""What one server process can hold, checked before its workers start: file descriptors and memory.

Every worker keeps its own link to the block's server (``server/worker.py``): one TCP
connection, so one file descriptor, in the server process, and some memory there (libzmq's
buffers and CURVE state of the connection, the service's records of the worker). A block of
many nodes with many workers each needs as many descriptors as it has workers; past the
process's limit ``accept`` fails (``EMFILE``) and workers never register, with nothing said.

So the server, at start:

* raises its soft ``RLIMIT_NOFILE`` to the hard limit (as ``ulimit -n`` may) and logs both;
* refuses to start, with :class:`~parsl_dragon.errors.ServerCapacityError` naming the numbers
  and the settings to change, when the planned workers' links plus :data:`FD_RESERVE` do not
  fit in that limit, or when their memory (:data:`MEMORY_PER_WORKER` each, measured by
  ``benchmarks/scale.py``) does not fit in what the node has available.

A worker's rank link (its second link, opened for its first MPI task whose ranks Dragon
starts) and client links come out of the reserve. Standard library only (``resource``).
"""
from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from typing import Optional

from parsl_dragon.host.memory import meminfo_bytes
from parsl_dragon.vocabulary import errors

logger = logging.getLogger(__name__)

FDS_PER_WORKER = 1       # its link to the server: one TCP connection
FD_RESERVE = 1024        # the server's own (logs, sockets, Dragon, clients, rank links): 24 with no worker here
MEMORY_PER_WORKER = 64 << 10  # bytes of server memory per worker link, rounded up from benchmarks/scale.py
MEMORY_RESERVE = 512 << 20    # the server itself, Parsl imported, before any worker (87 MB measured)
NR_OPEN = "/proc/sys/fs/nr_open"  # the kernel's ceiling for an unlimited hard limit


@dataclass(frozen=True)
class FdLimit:
    """The process's ``RLIMIT_NOFILE``: the soft limit found, the soft limit now, the hard limit."""

    found: int
    soft: int
    hard: int


def _ceiling(hard: int) -> int:
    """The highest soft limit ``hard`` allows (an unlimited hard limit stops at the kernel's nr_open)."""
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        with open(NR_OPEN) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return 1 << 20


def raise_fd_limit() -> FdLimit:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (never lower it); log both."""
    found, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _ceiling(hard)
    soft = found
    if found != resource.RLIM_INFINITY and found < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("Could not raise the file descriptor limit from %d to %d: %s", found, target, exc)
    logger.info("File descriptors: soft limit %d (was %d), hard limit %s", soft, found,
                "unlimited" if hard == resource.RLIM_INFINITY else hard)
    return FdLimit(found, soft, _ceiling(hard))


def planned_workers(backend) -> int:
    """How many workers ``backend`` will start: its ``workers_per_node`` (default cores - 1) per node."""
    from parsl_dragon.server.backend import default_workers  # no dragon import: only the function
    return sum(backend.workers_per_node or default_workers(node.cpus) for node in backend.nodes())


def _fix(workers: int, nodes: int) -> str:
    per_node = -(-workers // max(1, nodes))
    return (f"start fewer workers per node (DragonExecutor(workers_per_node=...); {per_node} per node on "
            f"{nodes} node(s) now)")


def check_fds(workers: int, nodes: int, limit: FdLimit) -> None:
    """Refuse ``workers`` links that, with :data:`FD_RESERVE`, do not fit in ``limit.soft``."""
    needed = workers * FDS_PER_WORKER + FD_RESERVE
    if needed <= limit.soft:
        logger.info("File descriptors: %d worker link(s) + %d reserved = %d of %d", workers, FD_RESERVE, needed,
                    limit.soft)
        return
    raise errors().ServerCapacityError(
        f"this server cannot hold {workers:,} worker links: they need {needed:,} file descriptors "
        f"({workers:,} x {FDS_PER_WORKER} + {FD_RESERVE:,} for the server itself) but its limit (RLIMIT_NOFILE, "
        f"ulimit -n) is {limit.soft:,} (soft limit found {limit.found:,}, hard limit {limit.hard:,}). Raise the "
        f"hard limit where the block starts (ulimit -Hn; /etc/security/limits.conf or the batch system's "
        f"setting) or {_fix(workers, nodes)}")


def available_memory_bytes(meminfo: str = "/proc/meminfo") -> Optional[int]:
    """``MemAvailable`` of this node in bytes, None if it cannot be read."""
    return meminfo_bytes("MemAvailable", meminfo)


def check_memory(workers: int, nodes: int, available: Optional[int]) -> None:
    """Refuse ``workers`` links whose server-side memory does not fit in ``available`` bytes."""
    needed = workers * MEMORY_PER_WORKER + MEMORY_RESERVE
    if available is None or needed <= available:
        return
    raise errors().ServerCapacityError(
        f"this server cannot hold {workers:,} worker links: they need about {needed >> 20:,} MiB of its memory "
        f"({workers:,} x {MEMORY_PER_WORKER >> 10} KiB + {MEMORY_RESERVE >> 20} MiB for the server itself) but "
        f"this node has {available >> 20:,} MiB available (MemAvailable). Run the server on a node with more "
        f"free memory or {_fix(workers, nodes)}")


def check_capacity(backend) -> FdLimit:
    """Raise the fd limit, then refuse (``ServerCapacityError``) what this server cannot hold."""
    limit = raise_fd_limit()
    workers, nodes = planned_workers(backend), len(backend.nodes())
    check_fds(workers, nodes, limit)
    check_memory(workers, nodes, available_memory_bytes())
    return limit
