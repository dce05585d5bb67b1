"""This host's memory, and the default size limit of one payload (a task's arguments or result).

A payload of any size travels on the links in frames of at most ``LINK_MAX_FRAME_BYTES``
(``wire/frames.py`` splits and joins them), so the only limit left is memory: every process
on the way (worker, server, driver) holds a large payload about three times at its peak (the
frames received, the joined payload, and the object unpickled from it or the frames sent on).
The default limit is therefore a quarter of the driver host's physical memory
(:data:`~parsl_dragon.vocabulary.MAX_PAYLOAD_MEMORY_SHARE`); ``max_payload_bytes`` /
``PARSL_DRAGON_MAX_PAYLOAD`` set another. Standard library only.
"""
from __future__ import annotations

import os
from typing import Optional

from parsl_dragon.vocabulary import KEPT_RESULTS_MEMORY_SHARE, MAX_PAYLOAD_MEMORY_SHARE

FALLBACK_MEMORY_BYTES = 16 << 30  # when /proc/meminfo and sysconf both fail


def meminfo_bytes(field: str, meminfo: str = "/proc/meminfo") -> Optional[int]:
    """One ``/proc/meminfo`` field (``MemTotal``, ``MemAvailable``...) in bytes, or None if it cannot be read."""
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def total_memory_bytes(meminfo: str = "/proc/meminfo") -> Optional[int]:
    """Physical memory of this host in bytes (``MemTotal``), or None if it cannot be read."""
    found = meminfo_bytes("MemTotal", meminfo)
    if found is not None:
        return found
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_max_payload_bytes() -> int:
    """A quarter of this host's memory (16 GiB's quarter if it cannot be read)."""
    return (total_memory_bytes() or FALLBACK_MEMORY_BYTES) // MAX_PAYLOAD_MEMORY_SHARE


def default_kept_results_memory() -> int:
    """What each node of a block gives its kept results: an eighth of this host's memory. The
    distributed dictionary's pool lives in ``/dev/shm`` and is touched only as results fill it."""
    return (total_memory_bytes() or FALLBACK_MEMORY_BYTES) // KEPT_RESULTS_MEMORY_SHARE
