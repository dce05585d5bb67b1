"""Kept results on the driver's side: references, reads over the server links, eviction.

A ``TaskResult`` of status KEPT becomes a reference (``task/kept.py``) through :meth:`KeptResults.
reference`, which also arranges its eviction: when the last reference to that result in the
driver is garbage (its factory is collected), the key goes into a queue that a small thread
sends to its server as ``EvictResults`` (a finalizer may run inside any thread, holding any
lock, so it only appends to a deque). :meth:`live` counts what each server still holds for
the driver, so a block holding live references is not scaled in as idle.

Reads: the driver registers, per connected server, a reader that sends ``FetchResult`` and
waits for its ``FetchedResult`` (the client's I/O thread completes it). A server that is lost
or stopped takes its references with it: its reader is replaced by the reason, and every read
waiting on it fails; reading such a reference raises ``ResultLost`` naming the task.

Routing: a task whose arguments hold references goes to the block that holds most of their
bytes (:meth:`home`); references held by another block are read here and sent as values
(:meth:`localize`), the one case where a kept result crosses the driver.
"""
from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from parsl_dragon.task import kept as k
from parsl_dragon.wire import dataplane as d
from parsl_dragon.wire import protocol as p

logger = logging.getLogger(__name__)

EVICT_PERIOD_S = 0.2  # how often released keys are sent to their servers


class KeptResults:
    """References handed out, reads in flight, and keys to release, for one executor."""

    def __init__(self, send: Callable[[str, p.Message], None], timeout_s: Optional[float] = None) -> None:
        self._send = send
        self.timeout_s = timeout_s  # None: a read waits as long as its server lives
        self._requests = itertools.count(1)
        self._waiting: Dict[int, Tuple[str, Future]] = {}
        self._live: Dict[str, int] = {}  # server id -> references alive in this driver
        self._released: Deque[Tuple[str, str, int]] = deque()
        self._lock = threading.Lock()
        self._warned: set = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._servers: set = set()
        self.bytes_read = 0  # kept bytes fetched into this driver so far

    # ---- servers --------------------------------------------------------------
    def attach(self, server_id: str) -> None:
        """A server's session is open: reads of its references go over it."""
        with self._lock:
            self._servers.add(server_id)
        k.register_reader(server_id, self._read)

    def lost(self, server_id: str, why: str) -> None:
        """A server is gone: its references cannot be read, and reads waiting on it fail."""
        k.forget_reader(server_id, why)
        with self._lock:
            self._servers.discard(server_id)
            self._live.pop(server_id, None)
            waiting = [(r, f) for r, (s, f) in self._waiting.items() if s == server_id]
            for request, _ in waiting:
                self._waiting.pop(request, None)
        for _, future in waiting:
            future.set_exception(KeyError(why))

    def live(self, server_id: str) -> int:
        with self._lock:
            return self._live.get(server_id, 0)

    # ---- references -------------------------------------------------------------
    def reference(self, server_id: str, result: p.TaskResult) -> Any:
        """The value a KEPT result's future gets; its eviction is arranged."""
        entry = d.KeptEntry.from_wire(result.kept)
        kept = k.KeptResult(server_id, entry.key, entry.manager, entry.nbytes, result.task_id, entry.type)
        with self._lock:
            self._live[server_id] = self._live.get(server_id, 0) + 1
        weakref.finalize(kept, self._released.append, (server_id, entry.key, entry.manager))
        self._start_thread()
        return k.reference(kept)

    def warn_unkept(self, result: p.TaskResult) -> None:
        """A result that was to be kept travelled: warn once per reason."""
        reason = result.unkept.split(":")[0]
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning("Task %d's result was not kept in its block and travelled to the driver: %s "
                           "(warned once)", result.task_id, result.unkept)

    def home(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Optional[str]:
        """The connected server holding most bytes of the task's referenced inputs (None: none).
        References of a server that is gone are left to :meth:`localize`, which raises their
        ``ResultLost`` at submit."""
        weight: Dict[str, int] = {}
        with self._lock:
            servers = set(self._servers)
        for ref in _references(args, kwargs):
            if ref.server_id in servers:
                weight[ref.server_id] = weight.get(ref.server_id, 0) + ref.nbytes
        return max(weight, key=lambda s: weight[s]) if weight else None

    def localize(self, args: Tuple[Any, ...], kwargs: Dict[str, Any], home: Optional[str]
                 ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        """References held by a server other than ``home`` read here and replaced by values."""
        def local(value: Any) -> Any:
            ref = k.kept_of(value)
            if ref is None or ref.server_id == home:
                return value
            logger.info("Task input %s is held by another block: it is read in the driver and sent", ref.describe())
            return ref()
        if not any(ref.server_id != home for ref in _references(args, kwargs)):
            return args, kwargs
        kwargs = {key: local(v) for key, v in kwargs.items()}
        if isinstance(kwargs.get("inputs"), list):
            kwargs["inputs"] = [local(v) for v in kwargs["inputs"]]
        return tuple(local(a) for a in args), kwargs

    # ---- reads ------------------------------------------------------------------
    def _read(self, ref: k.KeptResult) -> bytes:
        future: Future = Future()
        request = next(self._requests)
        with self._lock:
            if ref.server_id not in self._servers:
                raise KeyError("its block is no longer connected")
            self._waiting[request] = (ref.server_id, future)
        self._send(ref.server_id, d.FetchResult(request=request, key=ref.key, manager=ref.manager))
        data = future.result(timeout=self.timeout_s)
        self.bytes_read += len(data)
        return data

    def on_fetched(self, server_id: str, message: d.FetchedResult) -> None:
        """A read's reply (client I/O thread): the bytes, or why not."""
        with self._lock:
            waiting = self._waiting.pop(message.request, None)
        if waiting is None or waiting[0] != server_id:
            logger.warning("Ignored an unexpected FetchedResult %d from server %s", message.request, server_id)
            return
        future = waiting[1]
        if message.error or len(message.payloads) != 1:
            future.set_exception(KeyError(message.error or "the server sent no value"))
        else:
            future.set_result(message.payloads[0])

    # ---- eviction ---------------------------------------------------------------
    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._evict_loop, name="parsl-dragon-evict", daemon=True)
            self._thread.start()

    def _evict_loop(self) -> None:
        while not self._stop.wait(EVICT_PERIOD_S):
            self.flush()

    def flush(self) -> None:
        """Send released keys to the servers that still hold them."""
        batches: Dict[str, List[List[Any]]] = {}
        while self._released:
            server_id, key, manager = self._released.popleft()
            batches.setdefault(server_id, []).append([key, manager])
        for server_id, pairs in batches.items():
            with self._lock:
                if server_id not in self._servers:
                    continue
                self._live[server_id] = max(0, self._live.get(server_id, 0) - len(pairs))
            self._send(server_id, d.EvictResults(keys=pairs))

    def close(self) -> None:
        """The executor shuts down: the servers free everything with their stores."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for server_id in list(self._servers):
            self.lost(server_id, "the executor was shut down")


def _references(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> List[k.KeptResult]:
    values = list(args) + list(kwargs.values())
    if isinstance(kwargs.get("inputs"), list):
        values += kwargs["inputs"]
    return [ref for ref in map(k.kept_of, values) if ref is not None]
