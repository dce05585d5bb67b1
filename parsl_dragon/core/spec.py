"""Resource specifications: validate what a task asks for and derive its placement request.

A task's ``parsl_resource_specification`` is a dict. These keys have a meaning:

====================  =============  ==========  ==============================================
key                   type           default     meaning
====================  =============  ==========  ==============================================
``num_nodes``         int >= 1       1           nodes for an MPI task (HTEX key)
``ranks_per_node``    int >= 1       derived     MPI ranks on each node (HTEX key)
``num_ranks``         int >= 1       derived     total MPI ranks (HTEX key); must equal
                                                 ``num_nodes * ranks_per_node``
``launcher_options``  str            ``""``      extra MPI launcher options (HTEX key)
``pmi``               str            executor's  PMI wire-up: ``"cray"`` (PALS), ``"pmix"``,
                                     default     ``"mpiexec"`` (one ``mpiexec`` process starts
                                                 the ranks) or ``"none"`` (singletons)
``cpus_per_rank``     int >= 1       1           cores reserved per rank (or serial task)
``gpus_per_rank``     int >= 0       0           GPUs reserved per rank (or serial task)
``cpu_bind``          bool, "none"   False       pin each rank to the core ids placed for it;
                      or "core"                  ``"core"`` means True, ``"none"`` False
``priority``          number         unset       lower value starts first, as in HTEX;
                                                 tasks without one queue after all that have one
``walltime``          number > 0     (none)      seconds before the task is killed
====================  =============  ==========  ==============================================

A task is an *MPI task* when it has any of ``num_nodes``, ``ranks_per_node``,
``num_ranks``, ``launcher_options`` or ``pmi``. Derived values follow HTEX's
``validate_resource_spec`` but are integers: ``num_ranks = num_nodes *
ranks_per_node``; ``ranks_per_node = num_ranks / num_nodes`` (must divide). Without
``num_nodes`` the task uses ``num_ranks / ranks_per_node`` nodes when both are given,
else one node. The normalized spec of an MPI task always holds integer
``num_nodes``, ``ranks_per_node``, ``num_ranks`` and a ``pmi``; other keys appear
only when given, so ``{}`` (a serial task) stays ``{}``.

HTEX accepts its MPI integers as strings (``"4"``); so do we. Booleans, floats,
zero or negative counts, unknown PMI backends and inconsistent combinations raise
``InvalidResourceSpecification`` naming the keys. Keys this executor does not use
(Parsl's generic ``cores``, ``memory``, ``disk`` ...) are kept with a warning,
logged once per key, because Parsl's generic apps and tests pass them. Values must be
JSON-serializable: the spec travels to the server as JSON. Whether a task can
ever fit the block (nodes, cores, GPUs) is checked by :func:`check_fits` where the
block's nodes are known; :func:`request_for` turns a spec into a
:class:`parsl_dragon.core.placement.Request`.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Dict, Iterable, Mapping, Optional, Set, Tuple

from parsl.executors.errors import InvalidResourceSpecification

from parsl_dragon.core.placement import NodeSlots, Request
from parsl_dragon.vocabulary import DEFAULT_PMI, PMI_BACKENDS

logger = logging.getLogger(__name__)

MPI_KEYS: Tuple[str, ...] = ("num_nodes", "ranks_per_node", "num_ranks", "launcher_options", "pmi")
KNOWN_KEYS: Set[str] = set(MPI_KEYS) | {"cpus_per_rank", "gpus_per_rank", "cpu_bind", "priority", "walltime"}
_CPU_BIND = {"none": False, "core": True}
_warned: Set[str] = set()


def _invalid(keys: Iterable[str], message: str) -> InvalidResourceSpecification:
    return InvalidResourceSpecification(set(keys), message)


def _as_int(key: str, value: Any, minimum: Optional[int], strings: bool = False) -> int:
    """``value`` as an int >= ``minimum``; digit strings only when ``strings`` (HTEX keys)."""
    if strings and isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid([key], f"{key!r} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise _invalid([key], f"{key!r} must be >= {minimum}, got {value}")
    return value


def check_pmi(value: Any) -> str:
    """Return ``value`` if it names a PMI backend, else raise naming ``pmi``."""
    if not isinstance(value, str) or value not in PMI_BACKENDS:
        raise _invalid(["pmi"], f"'pmi' must be one of {', '.join(PMI_BACKENDS)}; got {value!r}")
    return value


def is_mpi(spec: Mapping[str, Any]) -> bool:
    """Whether a (raw or normalized) spec describes an MPI task."""
    return any(key in spec for key in MPI_KEYS)


def _derive_counts(spec: Mapping[str, Any]) -> Tuple[int, int, int]:
    """``(num_nodes, ranks_per_node, num_ranks)`` from HTEX's keys, checked for consistency."""
    get = {k: _as_int(k, spec[k], 1, strings=True) for k in ("num_nodes", "ranks_per_node", "num_ranks") if k in spec}
    nodes, ppn, ranks = get.get("num_nodes"), get.get("ranks_per_node"), get.get("num_ranks")
    if nodes is None:
        if ppn is not None and ranks is not None:
            if ranks % ppn:
                raise _invalid(["num_ranks", "ranks_per_node"],
                               f"num_ranks ({ranks}) is not a multiple of ranks_per_node ({ppn})")
            nodes = ranks // ppn
        else:
            nodes = 1
    if ppn is None:
        ppn = ranks // nodes if ranks is not None else 1
        if ranks is not None and ranks % nodes:
            raise _invalid(["num_ranks", "num_nodes"], f"num_ranks ({ranks}) is not divisible by num_nodes ({nodes})")
    if ranks is None:
        ranks = nodes * ppn
    if ranks != nodes * ppn:
        raise _invalid(["num_nodes", "ranks_per_node", "num_ranks"],
                       f"num_ranks ({ranks}) != num_nodes ({nodes}) * ranks_per_node ({ppn})")
    return nodes, ppn, ranks


def _normalize_known(key: str, value: Any) -> Any:
    """Validate one of our own (non-count) keys; return its canonical value."""
    if key == "launcher_options":
        if not isinstance(value, str):
            raise _invalid([key], f"'launcher_options' must be a string, got {value!r}")
        return value
    if key == "pmi":
        return check_pmi(value)
    if key == "cpus_per_rank":
        return _as_int(key, value, 1)
    if key == "gpus_per_rank":
        return _as_int(key, value, 0)
    if key == "priority":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _invalid([key], f"'priority' must be a finite number (lower runs first); got {value!r}")
        return value
    if key == "cpu_bind":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _CPU_BIND:
            return _CPU_BIND[value.lower()]
        raise _invalid([key], f"'cpu_bind' must be a bool, 'none' or 'core'; got {value!r}")
    if key == "walltime":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise _invalid([key], f"'walltime' must be a positive number of seconds, got {value!r}")
        return value
    return value  # the counts are handled by _derive_counts


def _check_unknown(key: Any, value: Any) -> None:
    if not isinstance(key, str):
        raise _invalid([str(key)], "resource specification keys must be strings")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _invalid([key], f"value of {key!r} is not JSON-serializable: {exc}") from exc
    if key not in _warned:
        _warned.add(key)
        logger.warning("Resource specification key %r is not used by DragonExecutor; keeping it", key)


def normalize_spec(spec: Any, *, default_pmi: str = DEFAULT_PMI) -> Dict[str, Any]:
    """Validate a task's resource specification and return a canonical, JSON-safe copy.

    Parameters
    ----------
    spec : dict or None
        The task's ``parsl_resource_specification``.
    default_pmi : str
        The executor's PMI backend, used for MPI tasks that do not name one.

    Returns
    -------
    dict
        Known keys in canonical form (see the module docstring), derived integer
        ``num_nodes`` / ``ranks_per_node`` / ``num_ranks`` and ``pmi`` for MPI tasks,
        unknown keys unchanged.

    Raises
    ------
    InvalidResourceSpecification
        Naming the offending keys.
    """
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise _invalid(["<spec>"], f"resource specification must be a dict, got {type(spec).__name__}")
    check_pmi(default_pmi)
    clean: Dict[str, Any] = {}
    for key, value in spec.items():
        if key in KNOWN_KEYS:
            clean[key] = _normalize_known(key, value)
        else:
            _check_unknown(key, value)
            clean[key] = value
    if is_mpi(spec):
        clean["num_nodes"], clean["ranks_per_node"], clean["num_ranks"] = _derive_counts(spec)
        clean.setdefault("pmi", default_pmi)
    return clean


def request_for(task_id: int, spec: Mapping[str, Any]) -> Request:
    """The placement request for a normalized spec (a serial task when it has no MPI keys)."""
    return Request(
        task_id,
        num_nodes=spec.get("num_nodes", 1),
        ranks_per_node=spec.get("ranks_per_node", 1),
        cpus_per_rank=spec.get("cpus_per_rank", 1),
        gpus_per_rank=spec.get("gpus_per_rank", 0),
        priority=spec.get("priority", math.inf),
    )


def _per_node_keys(spec: Mapping[str, Any], per_rank_key: str) -> Set[str]:
    """The keys that make up a per-node requirement (``ranks_per_node`` only when > 1)."""
    keys = {per_rank_key} & set(spec)
    if spec.get("ranks_per_node", 1) > 1:
        keys.add("ranks_per_node")
    return keys or {per_rank_key}


def check_fits(spec: Mapping[str, Any], nodes: Iterable[NodeSlots]) -> None:
    """Raise ``InvalidResourceSpecification`` if a normalized spec can never run on ``nodes``.

    Parameters
    ----------
    spec : mapping
        As returned by :func:`normalize_spec`.
    nodes : iterable of NodeSlots
        The allocation (a block's nodes); workers are not considered.
    """
    nodes = list(nodes)
    n, cores, gpus = request_for(0, spec).shape
    if n > len(nodes):
        raise _invalid(["num_nodes"], f"the task needs {n} nodes; the block has {len(nodes)}")
    max_cores, max_gpus = max(x.cores for x in nodes), max(x.gpus for x in nodes)
    if cores > max_cores:
        raise _invalid(_per_node_keys(spec, "cpus_per_rank"),
                       f"the task needs {cores} cores per node; the largest node has {max_cores}")
    if gpus > max_gpus:
        raise _invalid(_per_node_keys(spec, "gpus_per_rank"),
                       f"the task needs {gpus} GPUs per node; the largest node has {max_gpus}")
    able = sum(1 for x in nodes if x.cores >= cores and x.gpus >= gpus)
    if able < n:
        short_cores = sum(1 for x in nodes if x.cores >= cores) < n
        short_gpus = sum(1 for x in nodes if x.gpus >= gpus) < n
        both = not short_cores and not short_gpus  # only the combination is missing
        keys = {"num_nodes"}
        if short_cores or both:
            keys |= _per_node_keys(spec, "cpus_per_rank")
        if short_gpus or both:
            keys |= _per_node_keys(spec, "gpus_per_rank")
        raise _invalid(keys, f"the task needs {n} nodes with {cores} cores and {gpus} GPUs each; "
                             f"the block has {able}")
