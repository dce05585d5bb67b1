"""This host's memory, and the default size limit of one payload (a task's arguments or result).

A payload of any size travels on the links in frames of at most ``LINK_MAX_FRAME_BYTES``
(``wire/frames.py`` splits and joins them), so the only limit left is memory: every process
on the way (worker, server, driver) holds a large payload about three times at its peak (the
frames received, the joined payload, and the object unpickled from it or the frames sent on).
The default limit is therefore a quarter of the driver host's physical memory
(:data:`~parsl_dragon.vocabulary.MAX_PAYLOAD_MEMORY_SHARE`); ``max_payload_bytes`` /
``PARSL_DRAGON_MAX_PAYLOAD`` set another. And how a worker's malloc keeps freed memory
(:func:`keep_freed_heap`). Standard library only.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Mapping, Optional

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


# glibc's mallopt parameters, and the values its own dynamic thresholds reach at most on 64-bit
# (DEFAULT_MMAP_THRESHOLD_MAX, and the trim threshold it pairs with twice the mmap threshold)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_MMAP_THRESHOLD = 32 << 20
HEAP_TRIM_THRESHOLD = 2 * HEAP_MMAP_THRESHOLD
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")  # a user's own settings win


def keep_freed_heap(env: Mapping[str, str] = os.environ) -> bool:
    """Have glibc's malloc serve buffers under 32 MiB from its heap and keep up to 64 MiB of freed
    heap, from the start; whether it did (False: not glibc, or the user set the thresholds).

    By default glibc starts at 128 KiB and adapts: after a 1 MiB block is freed it serves 1 MiB
    from the heap but gives back more than 2 MiB freed at its top. A worker that reads a kept
    1 MB array holds the bytes read and their copy (2 MiB), frees both, and faulted 2 MiB of
    fresh pages in again at the next read: ~475 page faults, 1.2 ms of a 1.7 ms read measured on
    a 2-core VM (0.3-0.7 ms with these thresholds, no faults). These are the values glibc's own
    adaptation reaches at most, so a worker's freed memory it keeps is bounded as before."""
    if any(name in env for name in MALLOC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD))
