"""Resource specifications: validate what a task asks for, once, into a frozen :class:`TaskSpec`.

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
``keep_result``       bool           executor's  True: the result stays in the block's memory and
                                     threshold   the future holds a reference (docs/data.md);
                                                 False: it always travels to the driver
====================  =============  ==========  ==============================================

A task is an *MPI task* when it has any of ``num_nodes``, ``ranks_per_node``,
``num_ranks``, ``launcher_options`` or ``pmi``. Derived values follow HTEX's
``validate_resource_spec`` but are integers: ``num_ranks = num_nodes *
ranks_per_node``; ``ranks_per_node = num_ranks / num_nodes`` (must divide). Without
``num_nodes`` the task uses ``num_ranks / ranks_per_node`` nodes when both are given,
else one node. :func:`normalize_spec` (on the driver, once per task) returns a
:class:`TaskSpec` with every value filled in: an MPI task's holds integer ``num_nodes``,
``ranks_per_node``, ``num_ranks`` and a ``pmi`` (the executor's when the task names
none); a serial task's has ``pmi`` None and one rank on one node.

HTEX accepts its MPI integers as strings (``"4"``); so do we. Booleans, floats,
zero or negative counts, numbers a float cannot hold, unknown PMI backends and
inconsistent combinations raise ``InvalidResourceSpecification`` naming the keys. Keys
this executor does not use (Parsl's generic ``cores``, ``memory``, ``disk`` ...) are
accepted with a warning, logged once per key, because Parsl's generic apps and tests pass
them; their values must be JSON-serializable, but they are not kept: nothing uses them.

Wire form (driver -> server in ``SubmitTasks``, server -> worker in ``TaskEntry``):
:meth:`TaskSpec.to_wire` is a JSON object holding, for an MPI task, ``num_nodes``,
``ranks_per_node``, ``num_ranks`` and ``pmi``, and besides only the keys whose value is
not the default (``{}`` for a plain serial task)::

    {"num_nodes": 2, "ranks_per_node": 4, "num_ranks": 8, "pmi": "cray", "cpu_bind": true}

:meth:`TaskSpec.from_wire` checks it again, because the wire is untrusted: the same rules,
stricter -- counts must be JSON integers, ``cpu_bind`` a boolean, an MPI task must carry
those four keys, and an unknown key is refused (a resource this side cannot honour is not
silently ignored).

Whether a task can ever fit the block (nodes, cores, GPUs) is checked by
:func:`check_fits` where the block's nodes are known; :func:`request_for` turns a spec
into a :class:`parsl_dragon.core.placement.Request`.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields
from reprlib import repr as _show  # bounded: values may come from the wire
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Set, Tuple

from parsl.executors.errors import InvalidResourceSpecification

from parsl_dragon.core.placement import NodeSlots, Request
from parsl_dragon.vocabulary import DEFAULT_PMI, PMI_BACKENDS

logger = logging.getLogger(__name__)

MPI_KEYS: Tuple[str, ...] = ("num_nodes", "ranks_per_node", "num_ranks", "launcher_options", "pmi")
COUNT_KEYS: Tuple[str, ...] = ("num_nodes", "ranks_per_node", "num_ranks")
WIRE_MPI_KEYS: Tuple[str, ...] = COUNT_KEYS + ("pmi",)  # what an MPI task's wire form always holds
_CPU_BIND = {"none": False, "core": True}
_warned: Set[str] = set()


def _invalid(keys: Iterable[str], message: str) -> InvalidResourceSpecification:
    return InvalidResourceSpecification(set(keys), message)


def _as_int(key: str, value: Any, minimum: Optional[int], strings: bool = False) -> int:
    """``value`` as an int >= ``minimum``; digit strings only when ``strings`` (HTEX keys)."""
    if strings and isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid([key], f"{key!r} must be an integer, got {_show(value)}")
    if minimum is not None and value < minimum:
        raise _invalid([key], f"{key!r} must be >= {minimum}, got {_show(value)}")
    return value


def _finite(value: Any) -> bool:
    """A number (not a bool) that a float can hold and that is finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


def check_pmi(value: Any) -> str:
    """Return ``value`` if it names a PMI backend, else raise naming ``pmi``."""
    if not isinstance(value, str) or value not in PMI_BACKENDS:
        raise _invalid(["pmi"], f"'pmi' must be one of {', '.join(PMI_BACKENDS)}; got {_show(value)}")
    return value


# ---- one check per (non-count) key: (key, value, strict) -> canonical value -------------------
def _check_launcher_options(key: str, value: Any, strict: bool) -> str:
    if not isinstance(value, str):
        raise _invalid([key], f"'launcher_options' must be a string, got {_show(value)}")
    return value


def _check_cpus(key: str, value: Any, strict: bool) -> int:
    return _as_int(key, value, 1)


def _check_gpus(key: str, value: Any, strict: bool) -> int:
    return _as_int(key, value, 0)


def _check_cpu_bind(key: str, value: Any, strict: bool) -> bool:
    if isinstance(value, bool):
        return value
    if not strict and isinstance(value, str) and value.lower() in _CPU_BIND:
        return _CPU_BIND[value.lower()]
    allowed = "a bool" if strict else "a bool, 'none' or 'core'"
    raise _invalid([key], f"'cpu_bind' must be {allowed}; got {_show(value)}")


def _check_priority(key: str, value: Any, strict: bool) -> float:
    if not _finite(value):
        raise _invalid([key], f"'priority' must be a finite number (lower runs first); got {_show(value)}")
    return value


def _check_keep_result(key: str, value: Any, strict: bool) -> bool:
    if not isinstance(value, bool):
        raise _invalid([key], f"'keep_result' must be True or False, got {_show(value)}")
    return value


def _check_walltime(key: str, value: Any, strict: bool) -> float:
    if not _finite(value) or value <= 0:
        raise _invalid([key], f"'walltime' must be a positive number of seconds, got {_show(value)}")
    return value


_CHECKS: Dict[str, Callable[[str, Any, bool], Any]] = {
    "launcher_options": _check_launcher_options,
    "pmi": lambda key, value, strict: check_pmi(value),
    "cpus_per_rank": _check_cpus,
    "gpus_per_rank": _check_gpus,
    "cpu_bind": _check_cpu_bind,
    "priority": _check_priority,
    "walltime": _check_walltime,
    "keep_result": _check_keep_result,
}
KNOWN_KEYS: Set[str] = set(COUNT_KEYS) | set(_CHECKS)
# TaskSpec values meaning "not given"
_UNSET = {"pmi": None, "priority": math.inf, "walltime": None, "keep_result": None}


def _check_product(nodes: int, ppn: int, ranks: int) -> None:
    if ranks != nodes * ppn:
        raise _invalid(["num_nodes", "ranks_per_node", "num_ranks"],
                       f"num_ranks ({ranks}) != num_nodes ({nodes}) * ranks_per_node ({ppn})")


@dataclass(frozen=True)
class TaskSpec:
    """A task's resource specification, validated, every value filled in; the defaults
    describe a serial task. Frozen and hashable.

    Made by :func:`normalize_spec` (the user's dict, on the driver) or :meth:`from_wire`
    (on the server); the constructor checks its fields too. ``pmi`` is set exactly for
    MPI tasks (:attr:`is_mpi`).
    """

    num_nodes: int = 1
    ranks_per_node: int = 1
    num_ranks: int = 1
    pmi: Optional[str] = None         # the MPI task's PMI backend; None: a serial task
    launcher_options: str = ""
    cpus_per_rank: int = 1
    gpus_per_rank: int = 0
    cpu_bind: bool = False
    priority: float = math.inf        # lower runs first; inf: unset, after every set value (HTEX)
    walltime: Optional[float] = None  # seconds; None: no limit
    keep_result: Optional[bool] = None  # None: the executor's keep_results_over decides

    def __post_init__(self) -> None:
        for key in COUNT_KEYS:
            _as_int(key, getattr(self, key), 1)
        for key, check in _CHECKS.items():
            value = getattr(self, key)
            if not (key in _UNSET and value == _UNSET[key]):
                check(key, value, True)
        if self.is_mpi:
            _check_product(self.num_nodes, self.ranks_per_node, self.num_ranks)
        elif (self.num_nodes, self.ranks_per_node, self.num_ranks) != (1, 1, 1) or self.launcher_options:
            raise _invalid(["pmi"], "only an MPI task (one with a 'pmi') has several ranks or launcher_options")

    @property
    def is_mpi(self) -> bool:
        """Whether the task's ranks are launched by the server (it has a placement)."""
        return self.pmi is not None

    def to_wire(self) -> Dict[str, Any]:
        """The JSON-safe wire form: an MPI task's counts and ``pmi``, and every other value
        that is not the default."""
        always = WIRE_MPI_KEYS if self.is_mpi else ()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in always or getattr(self, f.name) != f.default}

    @classmethod
    def from_wire(cls, data: Any) -> "TaskSpec":
        """Check a wire form (untrusted) and rebuild the spec.

        Raises
        ------
        InvalidResourceSpecification
            Naming the offending keys: not an object, an unknown key, a value of the wrong
            type or range, an MPI task without its counts and ``pmi``, inconsistent counts.
        """
        if not isinstance(data, dict):
            raise _invalid(["<spec>"], f"resource specification must be a dict, got {type(data).__name__}")
        unknown = sorted(str(key)[:64] for key in data if key not in KNOWN_KEYS)[:10]  # bounded for replies
        if unknown:
            raise _invalid(unknown, f"unknown resource specification keys {', '.join(map(repr, unknown))}: "
                                    "this side cannot honour them")
        missing = [key for key in WIRE_MPI_KEYS if key not in data] if _names_mpi(data) else []
        if missing:
            raise _invalid(missing, f"an MPI task's specification must hold {', '.join(WIRE_MPI_KEYS)}; "
                                    f"missing {', '.join(missing)}")
        return _build(data, strict=True, default_pmi=DEFAULT_PMI)


_DEFAULTS: Dict[str, Any] = {f.name: f.default for f in fields(TaskSpec)}


def _names_mpi(raw: Mapping[Any, Any]) -> bool:
    """Whether a raw spec (a dict) describes an MPI task."""
    return any(key in raw for key in MPI_KEYS)


def _derive_counts(spec: Mapping[Any, Any], strict: bool) -> Tuple[int, int, int]:
    """``(num_nodes, ranks_per_node, num_ranks)`` from HTEX's keys, checked for consistency."""
    get = {k: _as_int(k, spec[k], 1, strings=not strict) for k in COUNT_KEYS if k in spec}
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
    _check_product(nodes, ppn, ranks)
    return nodes, ppn, ranks


def _check_unknown(key: Any, value: Any) -> None:
    if not isinstance(key, str):
        raise _invalid([str(key)], "resource specification keys must be strings")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _invalid([key], f"value of {key!r} is not JSON-serializable: {exc}") from exc
    if key not in _warned:
        _warned.add(key)
        logger.warning("Resource specification key %r is not used by DragonExecutor; ignoring it", key)


def _build(raw: Mapping[Any, Any], *, strict: bool, default_pmi: str) -> TaskSpec:
    """Check every key of a raw spec in order, derive the counts, fill in the defaults."""
    values: Dict[str, Any] = {}
    for key, value in raw.items():
        if key in _CHECKS:
            values[key] = _CHECKS[key](key, value, strict)
        elif key not in COUNT_KEYS:  # the counts are checked by _derive_counts
            _check_unknown(key, value)
    if _names_mpi(raw):
        values["num_nodes"], values["ranks_per_node"], values["num_ranks"] = _derive_counts(raw, strict)
        values.setdefault("pmi", default_pmi)
    return TaskSpec(**values)


def normalize_spec(spec: Any, *, default_pmi: str = DEFAULT_PMI) -> TaskSpec:
    """Validate a task's resource specification, once, on the driver.

    Parameters
    ----------
    spec : dict or None
        The task's ``parsl_resource_specification``.
    default_pmi : str
        The executor's PMI backend, used for MPI tasks that do not name one.

    Returns
    -------
    TaskSpec
        Known keys in canonical form (see the module docstring), derived integer
        ``num_nodes`` / ``ranks_per_node`` / ``num_ranks`` and ``pmi`` for MPI tasks.

    Raises
    ------
    InvalidResourceSpecification
        Naming the offending keys.
    """
    if spec is None:
        return TaskSpec()
    if not isinstance(spec, dict):
        raise _invalid(["<spec>"], f"resource specification must be a dict, got {type(spec).__name__}")
    check_pmi(default_pmi)
    return _build(spec, strict=False, default_pmi=default_pmi)


def request_for(task_id: int, spec: TaskSpec) -> Request:
    """The placement request for a spec (a serial task's is one core on one node)."""
    return Request(task_id, num_nodes=spec.num_nodes, ranks_per_node=spec.ranks_per_node,
                   cpus_per_rank=spec.cpus_per_rank, gpus_per_rank=spec.gpus_per_rank, priority=spec.priority)


def _per_node_keys(spec: TaskSpec, per_rank_key: str) -> Set[str]:
    """The keys that make up a per-node requirement: the per-rank key unless it has its
    default, ``ranks_per_node`` when > 1."""
    keys = {per_rank_key} if getattr(spec, per_rank_key) != _DEFAULTS[per_rank_key] else set()
    if spec.ranks_per_node > 1:
        keys.add("ranks_per_node")
    return keys or {per_rank_key}


def _gpu_offer(max_gpus: int) -> str:
    if max_gpus:
        return f"the largest node has {max_gpus}"
    return "this block has no GPUs (Dragon found none; available_accelerators names them)"


def check_fits(spec: TaskSpec, nodes: Iterable[NodeSlots]) -> None:
    """Raise ``InvalidResourceSpecification`` if a task can never run on ``nodes``.

    Parameters
    ----------
    spec : TaskSpec
        As returned by :func:`normalize_spec` or :meth:`TaskSpec.from_wire`.
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
                       f"the task needs {gpus} GPUs per node (gpus_per_rank {spec.gpus_per_rank} x ranks_per_node "
                       f"{spec.ranks_per_node}); " + _gpu_offer(max_gpus))
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


def spec_problem(exc: Exception) -> str:
    """Why a task's resource specification was refused, for its client."""
    return str(exc) if isinstance(exc, InvalidResourceSpecification) else f"unusable resource specification: {exc!r}"
