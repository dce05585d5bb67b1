"""Accelerators: the device ids of a block's nodes and the variables that bind a task to some of them.

``DragonExecutor(available_accelerators=...)`` has the meaning and types of HTEX's setting:

* an int ``n``: devices ``"0"`` .. ``"n-1"`` on every node;
* a list of strings: those ids, in that order; tiles such as ``"0.0"``, ``"0.1"`` (Aurora's
  PVC) are ids like any other; an id listed twice is a device two tasks may share (MPS-style),
  as in HTEX (the executor takes strings only, as HTEX's type says; this parser also takes
  ints in a list, as their text);
* None (the default): what Dragon reports for each node, ids ``"0"`` .. ``"n-1"``.

The slot table counts GPUs as slot indexes ``0..len(ids)-1`` per node (``core/placement.py``);
a task's indexes become ids here, and the ids become :data:`GPU_ENV_VARS`, all three set to
the same comma-separated list, as HTEX sets them for a worker. Pure: no I/O, no Parsl.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from parsl_dragon.vocabulary import errors

# The variables that name the devices a process may use: NVIDIA (CUDA), AMD (ROCm/HIP), Intel (Level Zero).
GPU_ENV_VARS: Tuple[str, ...] = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")
# An id goes into a comma-separated variable, a server flag and a shell word: no commas, spaces or quotes.
_ID = re.compile(r"^[A-Za-z0-9_.:-]+$")
MAX_ACCELERATORS = 4096

Accelerators = Tuple[str, ...]


def parse_accelerators(value: Union[None, int, str, Sequence[Union[str, int]]], name: str) -> Optional[Accelerators]:
    """``available_accelerators`` as a tuple of ids, or None for Dragon's count; ConfigurationError
    naming ``name`` and the bad value otherwise. A string is a comma-separated list (the server's
    flag, an environment variable); the empty string is no device."""
    bad = errors().ConfigurationError
    if value is None:
        return None
    if isinstance(value, bool):
        raise bad(f"{name} must be an int or a list of device ids, got {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= MAX_ACCELERATORS:
            raise bad(f"{name} must be between 0 and {MAX_ACCELERATORS} devices, got {value}")
        return tuple(str(i) for i in range(value))
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")] if value.strip() else []
    if not isinstance(value, (list, tuple)):
        raise bad(f"{name} must be an int or a list of device ids, got {type(value).__name__}")
    ids = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise bad(f"{name}: a device id must be a string such as '0' or '0.1', got {item!r}")
        text = str(item).strip()
        if not _ID.match(text):
            raise bad(f"{name}: device id {item!r} must be letters, digits, '.', ':', '_' or '-' "
                      "(no commas or spaces: ids are joined with commas in CUDA_VISIBLE_DEVICES)")
        ids.append(text)
    if len(ids) > MAX_ACCELERATORS:
        raise bad(f"{name} lists {len(ids)} devices; at most {MAX_ACCELERATORS}")
    return tuple(ids)


def as_flag(ids: Accelerators) -> str:
    """The server's ``--accelerators`` value (parsed back by :func:`parse_accelerators`)."""
    return ",".join(ids)


def gpu_count(ids: Optional[Accelerators], reported: int) -> int:
    """GPU slots a node offers: one per listed id (a shared device counts each time it is
    listed), else what Dragon reported for the node."""
    return reported if ids is None else len(ids)


def device_ids(slots: Iterable[int], ids: Optional[Accelerators]) -> List[str]:
    """The ids of slot indexes ``slots`` (the slot table's GPU numbers on one node)."""
    return [str(slot) if ids is None else ids[slot] for slot in slots]


def gpu_environment(devices: Sequence[str]) -> Dict[str, str]:
    """:data:`GPU_ENV_VARS`, each the comma-separated ``devices``."""
    value = ",".join(devices)
    return {var: value for var in GPU_ENV_VARS}


def per_rank(devices: Sequence[str], gpus_per_rank: int, local_rank: int) -> List[str]:
    """The devices of local rank ``local_rank`` among a node's ``devices`` (consecutive groups
    of ``gpus_per_rank``, as the slot table reserves them)."""
    return list(devices[local_rank * gpus_per_rank:(local_rank + 1) * gpus_per_rank])
