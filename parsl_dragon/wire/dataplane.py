"""Messages of the data plane: results kept in their block, read and released by reference.

A task whose result is *kept* (its ``keep_result`` key, or the executor's ``keep_results_over``
threshold) leaves the serialized value in its block's distributed dictionary (Dragon's DDict,
``server/shelf.py``) and answers with a ``TaskResult`` of status ``KEPT`` whose ``kept`` field is
a :class:`KeptEntry`. The driver's future then holds a reference (``task/kept.py``)::

    server -> worker   StoreReady      the DDict to attach (once per worker, before kept tasks)
    worker -> server   TaskResults     status KEPT, kept = {"key", "manager", "nbytes", "type"}
    client -> server   FetchResult     the driver uses a reference: send me the bytes
    server -> client   FetchedResult   the bytes (one payload), or why not (``error``)
    client -> server   EvictResults    no reference to these is left in the driver: free them

Decoding follows ``wire/protocol.py`` (these classes register with the same ``Message``
registry when this module is imported; every process that speaks them imports it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List

from parsl_dragon.wire.protocol import Message


@dataclass(frozen=True)
class KeptEntry:
    """Where a kept result is: its key, the DDict manager holding it (the producer's node),
    its serialized size and the class of the value (``module:qualname``, for ``isinstance``
    before the value is read)."""

    key: str
    manager: int
    nbytes: int
    type: str = ""

    def to_wire(self) -> Dict[str, Any]:
        return {"key": self.key, "manager": self.manager, "nbytes": self.nbytes, "type": self.type}

    @classmethod
    def from_wire(cls, data: Dict[str, Any]) -> "KeptEntry":
        """Check a ``TaskResult.kept`` object (untrusted); ValueError naming what is wrong."""
        key, manager, nbytes, kind = data.get("key"), data.get("manager"), data.get("nbytes"), data.get("type", "")
        if not isinstance(key, str) or not key or len(key) > 256:
            raise ValueError(f"kept result key must be a non-empty string, got {key!r:.80}")
        for name, value in (("manager", manager), ("nbytes", nbytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"kept result {name} must be an integer >= 0, got {value!r:.80}")
        if not isinstance(kind, str) or len(kind) > 512:
            raise ValueError("kept result type must be a short string")
        return cls(key, manager, nbytes, kind)


@dataclass
class StoreReady(Message):
    """The block's DDict is up: attach it (``descriptor``, Dragon's ``DDict.serialize()``); keep
    results whose serialized size is at least ``keep_over`` bytes (-1: only tasks that ask).
    ``pools``: its managers' memory pools (serialized descriptors, base64, by manager id), which a
    worker reads its free memory from; empty if unknown."""

    descriptor: str
    server_id: str
    keep_over: int = -1
    pools: List[str] = field(default_factory=list)


@dataclass
class FetchResult(Message):
    """Client: send me the bytes of a kept result (``request`` matches the reply)."""

    request: int
    key: str
    manager: int


@dataclass
class FetchedResult(Message):
    """Server: the kept result's serialized value as the one payload, or ``error`` (and none)."""

    has_payloads: ClassVar[bool] = True
    request: int
    error: str = ""
    payloads: List[bytes] = field(default_factory=list, repr=False)


@dataclass
class EvictResults(Message):
    """Client: these kept results are referenced nowhere in the driver any more; free them."""

    keys: List[List[Any]]  # [key, manager] pairs
