"""Payloads of any size on links whose frames are capped: split into frames, joined again, and
the one limit left, memory (``max_payload_bytes``).

libzmq drops the connection of a peer that sends a frame over the receiver's ``MAXMSGSIZE``
(:data:`~parsl_dragon.vocabulary.LINK_MAX_WIRE_FRAME_BYTES`), so :func:`split` cuts a payload
larger than :data:`MAX_FRAME_BYTES` into consecutive frames (views into it: no copy) and
``wire/protocol.py`` writes the count per payload into the header (:data:`CHUNKS`);
:func:`join` checks the counts and puts the payloads back together. A sender checks a payload
it makes against the limit with :func:`payload_error` (the driver its tasks' arguments, a
worker its results), so a task whose payload is too large fails alone, with its size. A large
message is announced first (``protocol.Incoming``): while it travels nothing else arrives on
its link, not even heartbeats, and a lease judged by silence would otherwise expire.
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional, Tuple

from parsl_dragon.errors import ProtocolError
from parsl_dragon.vocabulary import ENV_MAX_PAYLOAD, LINK_MAX_FRAME_BYTES

MAX_FRAME_BYTES = LINK_MAX_FRAME_BYTES  # the most a sender puts in one frame
CHUNKS = "chunks"  # header key: frames per payload, present when a payload was split
# A message whose payloads pass NOTICE_BYTES is announced (protocol.Incoming): its receiver
# counts the sender alive for the time the transfer may take at LINK_MIN_BYTES_PER_S.
NOTICE_BYTES = 64 << 20
LINK_MIN_BYTES_PER_S = 10 << 20  # CURVE measured ~200 MB/s per hop on 2 shared cores; 20x margin
# Parsl's serialize() logs a WARNING ("this could cause overflows") for every payload past its
# buffer_threshold: here a payload of any size is framed, and the limit is payload_error's.
NO_SERIALIZER_WARNING = sys.maxsize


def lease_extension(nbytes: int) -> float:
    """Seconds a receiver waits beyond its lease for an announced message of ``nbytes``."""
    return max(0, nbytes) / LINK_MIN_BYTES_PER_S


def split(payloads: List[Any]) -> Tuple[List[Any], List[int]]:
    """Frames of at most MAX_FRAME_BYTES (views into the payloads: no copy) and the count per payload."""
    frames: List[Any] = []
    counts: List[int] = []
    for payload in payloads:
        size = len(payload)
        if size <= MAX_FRAME_BYTES:
            frames.append(payload)
            counts.append(1)
            continue
        view = memoryview(payload).cast("B")
        parts = [view[start:start + MAX_FRAME_BYTES] for start in range(0, size, MAX_FRAME_BYTES)]
        frames += parts
        counts.append(len(parts))
    return frames, counts


def join(name: str, frames: List[Any], counts: Any) -> List[Any]:
    """The payloads of a message whose large payloads were split (``counts`` frames each)."""
    if counts is None:
        return list(frames)
    if not isinstance(counts, list) or not all(type(c) is int and c >= 1 for c in counts) \
            or sum(counts) != len(frames):
        raise ProtocolError(f"{name}: {CHUNKS!r} must be positive frame counts adding up to the "
                            f"{len(frames)} payload frames")
    payloads, at = [], 0
    for count in counts:
        payloads.append(frames[at] if count == 1 else b"".join(frames[at:at + count]))
        at += count
    return payloads


def _human(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def payload_error(what: str, size: int, limit: int) -> Optional[str]:
    """Why a payload of ``size`` bytes is not sent (None if it is), naming its size and the limit."""
    if size <= limit:
        return None
    return (f"{what} is {size:,} bytes ({_human(size)}), over max_payload_bytes {limit:,} "
            f"({_human(limit)}; default a quarter of the driver host's memory, "
            f"{ENV_MAX_PAYLOAD} sets another): every process on its way holds a payload about three "
            "times; pass data this large through files or shared storage instead")
