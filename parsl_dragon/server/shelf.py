"""The block's shelf of kept results: Dragon's distributed dictionary (DDict), as bytes.

One DDict per block, one manager per node, ``kept_results_memory`` bytes each (the managers'
pools live in ``/dev/shm`` and are touched only as results fill them). Values are the bytes
Parsl's serializer made on the worker, stored and read as they are (:class:`RawBytes`: no
pickling of a pickle, and nothing here ever unpickles them). A worker puts a result on its
*own node's* manager, so the bytes stay where they were made; a reader names that manager
(the key does not hash to it), reads locally when it runs on that node and through Dragon's
transport when not. Used by the server (create, read, delete, destroy) and by the workers
(attach, put, read); both are Dragon processes of the block, which a DDict client must be.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterator, Optional

from dragon.data.ddict import DDict, DDictFullError

logger = logging.getLogger(__name__)

TIMEOUT_S = 60.0  # one DDict operation (a large value through a busy 2-core node takes seconds)


class ShelfFull(Exception):
    """The node's manager has no room for this result."""


class RawBytes:
    """DDict value pickler that writes and reads bytes as they are."""

    @staticmethod
    def dump(obj: Any, file: Any) -> None:
        file.write(obj)

    @staticmethod
    def load(file: Any) -> bytes:
        return file.read()


class Shelf:
    """One attached DDict client and a raw, manager-directed handle per manager used."""

    def __init__(self, ddict: Any, creator: bool) -> None:
        self.ddict = ddict
        self.creator = creator
        self._handles: Dict[int, Any] = {}

    @classmethod
    def create(cls, nodes: int, bytes_per_node: int) -> "Shelf":
        """A new DDict over ``nodes`` nodes (the block's), one manager each."""
        with _our_log_handlers():
            ddict = DDict(1, nodes, bytes_per_node * nodes, timeout=TIMEOUT_S, name="parsl-dragon-kept")
        return cls(ddict, creator=True)

    @classmethod
    def attach(cls, descriptor: str) -> "Shelf":
        with _our_log_handlers():
            return cls(DDict.attach(descriptor, timeout=TIMEOUT_S), creator=False)

    @property
    def descriptor(self) -> str:
        return self.ddict.serialize()

    @property
    def local_manager(self) -> int:
        return int(self.ddict.local_manager)

    def _handle(self, manager: int) -> Any:
        handle = self._handles.get(manager)
        if handle is None:
            handle = self._handles[manager] = self.ddict.manager(manager).pickler(value_pickler=RawBytes)
        return handle

    def put(self, key: str, data: bytes) -> int:
        """Store ``data`` on this node's manager; return that manager's id. ShelfFull if no room."""
        manager = self.local_manager
        try:
            self._handle(manager)[key] = data
        except DDictFullError as exc:
            raise ShelfFull(str(exc).splitlines()[0]) from exc
        return manager

    def get(self, key: str, manager: int) -> bytes:
        """The bytes of ``key`` on ``manager``; KeyError if it is not there."""
        try:
            return self._handle(manager)[key]
        except KeyError:
            raise
        except Exception as exc:  # DDictKeyError is a KeyError; other DDict errors say why
            if "not found" in str(exc).lower():
                raise KeyError(key) from exc
            raise

    def delete(self, key: str, manager: int) -> bool:
        """Free ``key`` on ``manager``; False if it was not there."""
        try:
            del self._handle(manager)[key]
            return True
        except KeyError:
            return False

    def close(self) -> None:
        """Detach (a worker) or destroy (the server, which created it: the pools are freed)."""
        for handle in self._handles.values():
            _quietly(handle.detach)
        self._handles.clear()
        _quietly(self.ddict.destroy if self.creator else self.ddict.detach)


@contextlib.contextmanager
def _our_log_handlers() -> Iterator[None]:
    """A DDict client's first use sets up Dragon's own logging, which clears the root logger's
    handlers: the server's log file and the workers' stderr would go silent (a record logged
    meanwhile on another thread lost). Its module logger is set first, so that setup does not
    run; whatever still removes a handler is undone."""
    from dragon.data.ddict import ddict as module
    if getattr(module, "log", "") is None:  # its setup runs only while this is None: give it ours
        module.log = logging.getLogger("dragon.ddict")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


def _quietly(call: Any) -> Optional[Exception]:
    try:
        call()
        return None
    except Exception as exc:  # a runtime on its way down may refuse; nothing else to free here
        logger.warning("Kept-results shelf: %s failed: %r", getattr(call, "__name__", call), exc)
        return exc
