"""The block's shelf of kept results: Dragon's distributed dictionary (DDict), as bytes.

One DDict per block, one manager per node, ``kept_results_memory`` bytes each (the managers'
pools live in ``/dev/shm`` and are touched only as results fill them). Values are the parts the
worker's codec made (``task/codec.py``: a head, then array buffers as they are), written one
after another and read back as one bytes-like object (:class:`RawParts`: nothing here pickles or
unpickles them). A worker puts a result on its *own node's* manager, so the bytes stay where they
were made; a reader names that manager (the key does not hash to it), reads locally when it runs
on that node and through Dragon's transport when not. Used by the server (create, read, delete,
destroy) and by the workers (attach, put, read); both are Dragon processes of the block, which a
DDict client must be. Before a put, a worker reads its manager's free memory from the manager's
pool itself (attached by the descriptor the orchestrator records, :meth:`Shelf.create`), not by
asking the manager. The DDict's orchestrator process starts through :func:`orchestrator_main`,
which mends a busy loop of Dragon 0.15 there.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import socket
import time
from base64 import b64decode
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import cloudpickle
from dragon.data.ddict import DDict, DDictFullError
from dragon.data.ddict import orchestrator as dragon_orchestrator
from dragon.data.ddict.ddict import NULLCheckpointPersister
from dragon.managed_memory import MemoryPool

logger = logging.getLogger(__name__)

TIMEOUT_S = 60.0  # one DDict operation (a large value through a busy 2-core node takes seconds)


class ShelfFull(Exception):
    """The node's manager has no room for this result."""


Part = Union[bytes, bytearray, memoryview]


class RawParts:
    """DDict value pickler: writes a sequence of bytes-like parts as they are, one message each;
    reads them back as one object (the only part as it came, or one writable ``bytearray``)."""

    @staticmethod
    def dump(parts: Sequence[Part], file: Any) -> None:
        for part in parts:
            file.write(part)

    @staticmethod
    def load(file: Any) -> Union[bytes, bytearray]:
        chunks: List[bytes] = []
        while True:
            try:
                chunk = file.read()  # one message; EOFError after the last
            except EOFError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else bytearray().join(chunks)  # malloc'd: a zeroed one costs page faults


class Shelf:
    """One attached DDict client and a raw, manager-directed handle per manager used."""

    def __init__(self, ddict: Any, creator: bool, pools: Sequence[str] = ()) -> None:
        self.ddict = ddict
        self.creator = creator
        self.directory: Optional[str] = None
        self.pools = list(pools)  # the managers' serialized pool descriptors (base64), by manager id; [] if unknown
        self._lock_name = "parsl-dragon-kept-" + hashlib.sha1(self.descriptor.encode()).hexdigest()[:20]  # per DDict
        self._handles: Dict[int, Any] = {}
        self._pool: Any = None  # this node's manager's pool, attached at the first put

    @classmethod
    def create(cls, nodes: int, bytes_per_node: int, directory: str) -> "Shelf":
        """A new DDict over ``nodes`` nodes (the block's), one manager each. Its orchestrator
        writes a metadata file (``ddict_orc_*``) into ``directory`` (the block's), not the
        current directory; :meth:`close` removes it (a killed block leaves it in its own dir)."""
        with _our_log_handlers(), _patient_orchestrator():
            ddict = DDict(1, nodes, bytes_per_node * nodes, timeout=TIMEOUT_S, persist_path=directory)
        shelf = cls(ddict, creator=True, pools=_pool_descriptors(ddict, directory))
        shelf.directory = directory
        return shelf

    @classmethod
    def attach(cls, descriptor: str, pools: Sequence[str] = ()) -> "Shelf":
        """Attach a worker to the block's DDict. A process's first request to Dragon's local services
        initializes a lock lazily, and a second thread's first request at the same moment fails with
        ``DRAGON_LOCK_ALREADY_INITD`` (seen once in a worker's attach); the lock is then initialized,
        so that failure is tried once more."""
        try:
            return cls._attach_once(descriptor, pools)
        except Exception as exc:
            if not _lock_init_race(exc):
                raise
            logger.warning("Attaching the kept-results store met Dragon's lock initialization race; trying again")
        return cls._attach_once(descriptor, pools)

    @classmethod
    def _attach_once(cls, descriptor: str, pools: Sequence[str]) -> "Shelf":
        with _our_log_handlers():
            return cls(DDict.attach(descriptor, timeout=TIMEOUT_S), creator=False, pools=pools)

    @property
    def descriptor(self) -> str:
        return self.ddict.serialize()

    @property
    def local_manager(self) -> int:
        return int(self.ddict.local_manager)

    def _handle(self, manager: int) -> Any:
        handle = self._handles.get(manager)
        if handle is None:
            handle = self._handles[manager] = self.ddict.manager(manager).pickler(value_pickler=RawParts)
        return handle

    def put(self, key: str, parts: Sequence[Part]) -> int:
        """Store the value made of ``parts`` on this node's manager; return that manager's id.
        ShelfFull if no room.

        A DDict manager whose pool cannot take a value does not refuse it at once: it waits for
        memory until its timeout, and a put abandoned that way has been seen to leave the next
        value on the same stream unreadable. So the node's puts take turns (:class:`NodeLock`)
        and each first looks whether the manager's pool has a free block for each part."""
        manager = self.local_manager
        handle = self._handle(manager)
        blocks = [block_size(memoryview(part).nbytes) for part in parts]
        with NodeLock(self._lock_name):
            total, free, free_blocks = self._pool_figures(manager, handle)
            headroom = max(0, int(total * FULL_SHARE) - (total - free))
            if headroom < sum(blocks) or not buddy_fits(blocks, free_blocks):
                largest = max((size for size, count in free_blocks.items() if count > 0), default=0)
                raise ShelfFull(f"the node's store has no room for {len(blocks)} part(s) taking {sum(blocks)} bytes "
                                f"(largest free block: {largest}, below the full mark: {headroom})")
            try:
                handle[key] = parts
            except DDictFullError as exc:
                raise ShelfFull(str(exc).splitlines()[0]) from exc
            except Exception:
                self._handles.pop(manager, None)  # a put that failed midway: never reuse its stream
                _quietly(handle.detach)
                raise
        return manager

    def _pool_figures(self, manager: int, handle: Any) -> "tuple[int, int, Dict[int, int]]":
        """(size, free bytes, free blocks by size) of this node's manager's pool: read from the pool,
        attached here (10 us), else by asking the manager (0.3-1.4 ms measured: when the pool's
        descriptor is unknown or cannot be attached)."""
        if self._pool is None and manager < len(self.pools):
            try:
                self._pool = MemoryPool.attach(b64decode(self.pools[manager]))
            except Exception as exc:  # another Dragon, or a pool gone: ask the manager
                logger.warning("Cannot attach the kept-results pool of manager %d (%r); asking it", manager, exc)
                self.pools = []
        if self._pool is not None:
            return int(self._pool.size), int(self._pool.free_space), _counts(self._pool.free_blocks)
        stats = handle.dstats.get(manager)
        if stats is None:
            return 0, 0, {}
        return int(stats.total_bytes), int(stats.total_bytes) - int(stats.total_used_bytes), _counts(stats.free_blocks)

    def get(self, key: str, manager: int) -> Union[bytes, bytearray]:
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
        if self._pool is not None:
            _quietly(self._pool.detach)
            self._pool = None
        _quietly(self.ddict.destroy if self.creator else self.ddict.detach)
        for leftover in glob.glob(os.path.join(self.directory, "ddict_orc_*")) if self.directory else ():
            with contextlib.suppress(OSError):
                os.unlink(leftover)


FULL_SHARE = 0.85  # below the DDict manager's own 0.9 threshold: never wait for memory
SMALLEST_BLOCK = 4096
VALUE_OVERHEAD = 1024  # a stored value's headers (a 3 MiB value was measured to take 4 MiB + 32 bytes)


def block_size(nbytes: int) -> int:
    """The pool block a value of ``nbytes`` takes: Dragon's heap hands out powers of two."""
    return max(SMALLEST_BLOCK, 1 << (nbytes + VALUE_OVERHEAD - 1).bit_length())


def buddy_fits(blocks: Sequence[int], free_blocks: Dict[int, int]) -> bool:
    """Whether a buddy allocator with these free blocks (size -> count) can hand out all ``blocks``
    (powers of two), largest first: each takes the smallest free block that holds it, and what
    it splits off stays free (one block of each size from its own up to half the one it split)."""
    free = dict(free_blocks)
    for block in sorted(blocks, reverse=True):
        source = min((size for size, count in free.items() if count > 0 and size >= block), default=None)
        if source is None:
            return False
        free[source] -= 1
        while source > block:
            source //= 2
            free[source] = free.get(source, 0) + 1
    return True


def _counts(free_blocks: Optional[Dict[Any, Any]]) -> Dict[int, int]:
    return {int(size): int(count) for size, count in (free_blocks or {}).items()}


def _pool_descriptors(ddict: Any, directory: str) -> List[str]:
    """The managers' pool descriptors, which the orchestrator writes into ``directory`` once all
    managers are up (``ddict_orc_<name>``: base64 of a pickle whose first item lists them); []
    if this Dragon writes something else (workers then ask their manager before each put)."""
    try:
        metadata = NULLCheckpointPersister.load_metadata(logger, directory, ddict.get_name())
        pools = list(cloudpickle.loads(b64decode(metadata))[0])
        if not all(isinstance(pool, str) for pool in pools):
            raise ValueError(f"pool descriptors of types {sorted({type(pool).__name__ for pool in pools})}")
        return pools
    except Exception as exc:
        logger.warning("The kept-results store's pool descriptors are not readable (%r): each put asks its "
                       "manager for its free memory", exc)
        return []


class NodeLock:
    """A lock shared by the processes of one node, without a file: an abstract Unix socket name
    can be bound by one process at a time and is released when it closes or dies."""

    def __init__(self, name: str, poll_s: float = 0.005) -> None:
        self.address = "\0" + name
        self.poll_s = poll_s
        self._sock: Optional[socket.socket] = None

    def __enter__(self) -> "NodeLock":
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(self.address)
                self._sock = sock
                return self
            except OSError:
                sock.close()
                time.sleep(self.poll_s)

    def __exit__(self, *exc: Any) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


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


_DRAGON_ORCHESTRATOR_START = dragon_orchestrator.start  # Dragon's own, kept before any swap


def orchestrator_main(*args: Any, **kwargs: Any) -> None:
    """The DDict orchestrator's process: Dragon's own ``start`` after the exception monitor of
    the process group that runs the managers has been made to wait (:func:`_patient_exq_monitor`).

    Dragon 0.15's monitor polls the group's exception queue with ``poll(timeout=0.1)``, and that
    poll returns at once on an empty queue: the orchestrator spun one core (96 % measured, idle)
    for as long as the block kept results, and on a 2-core node every DDict operation waited for
    a CPU: a round trip took 1.7-27 ms instead of 0.2-0.4 (``benchmarks/shelf_ops.py``)."""
    from dragon.native.process_group import ProcessGroup
    if all(hasattr(ProcessGroup, name) for name in ("_exq_monitor", "_EXCEPTION_Q_PATIENCE")):
        ProcessGroup._exq_monitor = _patient_exq_monitor
    else:  # another Dragon: leave it as it is
        logger.warning("Dragon's ProcessGroup has no exception monitor to fix; the DDict orchestrator runs as is")
    _DRAGON_ORCHESTRATOR_START(*args, **kwargs)


def _patient_exq_monitor(group: Any) -> None:
    """Dragon's ``ProcessGroup._exq_monitor`` with the wait its poll was meant to make: an
    exception a manager raised is seen within the group's patience (0.1 s), as before."""
    patience = group._EXCEPTION_Q_PATIENCE
    while not group._exq_shutdown.is_set():
        started = time.monotonic()
        if not group._exq.poll(timeout=patience):
            group._exq_shutdown.wait(max(0.0, patience - (time.monotonic() - started)))
            continue
        with group._exq_lock:
            ex = group._exq.get()
            group._exq.put(ex)
        if isinstance(ex, Exception):
            group._ex_raised = True
            return


@contextlib.contextmanager
def _patient_orchestrator() -> Iterator[None]:
    """While a DDict is made here, its orchestrator process runs :func:`orchestrator_main`
    (``DDict`` looks Dragon's ``start`` up when it starts that process, which imports this module)."""
    dragon_orchestrator.start = orchestrator_main
    try:
        yield
    finally:
        dragon_orchestrator.start = _DRAGON_ORCHESTRATOR_START


def _lock_init_race(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is Dragon's lazy lock initialization race."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if "DRAGON_LOCK_ALREADY_INITD" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _quietly(call: Any) -> Optional[Exception]:
    try:
        call()
        return None
    except Exception as exc:  # a runtime on its way down may refuse; nothing else to free here
        logger.warning("Kept-results shelf: %s failed: %r", getattr(call, "__name__", call), exc)
        return exc
