"""Kept results on the server's side: the block's shelf, its start, reads for the driver, eviction.

The shelf (``server/shelf.py``, a Dragon DDict) is created on a thread of its own: at start when
the executor keeps results by size (``keep_results_over``), else when the first task that asks
(``keep_result: True``) arrives. Tasks that may keep their result wait here (:meth:`hold`) until
the shelf is up, so their workers know it (``StoreReady`` goes to every worker first); if it
cannot be created they run anyway and their results travel, with the reason (``unkept``).

Reads for the driver (``FetchResult``) and evictions (``EvictResults``) run on one I/O thread, in
order, never on the service loop: a large value takes seconds. Finished reads wake the loop
through a pipe (as rank launches do) and are collected by :meth:`finished`. ``close()`` destroys
the DDict (its pools in ``/dev/shm`` go with it).
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any, Callable, List, Optional, Tuple

from parsl_dragon.core.spec import TaskSpec
from parsl_dragon.wire import dataplane as d

logger = logging.getLogger(__name__)

Held = Tuple[Any, ...]  # whatever the service parks: it gets it back as it was
Reply = Tuple[bytes, d.FetchedResult]  # client identity, the reply


class ResultStore:
    """The block's kept-results shelf, as the service loop sees it."""

    def __init__(self, server_id: str, bytes_per_node: int, keep_over: Optional[int], directory: str = ".",
                 make_shelf: Optional[Callable[[int, int, str], Any]] = None) -> None:
        self.server_id = server_id
        self.directory = directory  # the block's: where the DDict's orchestrator writes its metadata
        self.nodes, self.bytes_per_node = 0, bytes_per_node
        self.keep_over = keep_over
        self._make_shelf = make_shelf
        self.shelf: Any = None
        self.state = "off"  # off -> starting -> ready | failed
        self.why_failed = ""
        self.held: List[Held] = []
        self._done = threading.Event()
        self._jobs: "queue.Queue[Optional[Callable[[], Optional[Reply]]]]" = queue.Queue()
        self._replies: List[Reply] = []
        self._lock = threading.Lock()
        self.wakeup, self._wake_fd = os.pipe()
        os.set_blocking(self.wakeup, False)
        self._thread: Optional[threading.Thread] = None

    def open(self, nodes: int) -> None:
        """The block's nodes are known: start the shelf now if results are kept by size."""
        self.nodes = nodes
        if self.keep_over is not None:
            self.start()

    def wants(self, spec: TaskSpec) -> bool:
        """Whether a task's result may be kept: it asks, or the executor keeps large ones."""
        return spec.keep_result is True or (spec.keep_result is None and self.keep_over is not None)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start(self) -> None:
        """Create the shelf on the I/O thread (once)."""
        if self.state != "off":
            return
        self.state = "starting"
        self._thread = threading.Thread(target=self._io_loop, name="kept-results", daemon=True)
        self._thread.start()

    def hold(self, item: Held) -> bool:
        """Park a task that may keep its result while the shelf starts; False: go on now."""
        if self.state == "off":
            self.start()
        if self.state != "starting":
            return False
        self.held.append(item)
        return True

    def ready_message(self) -> Optional[d.StoreReady]:
        """What every worker is told once the shelf is up (None before, or if it failed)."""
        if not self.ready:
            return None
        return d.StoreReady(descriptor=self.shelf.descriptor, server_id=self.server_id,
                            keep_over=-1 if self.keep_over is None else self.keep_over, pools=list(self.shelf.pools))

    def started(self) -> Optional[List[Held]]:
        """Once the shelf's start ended (up or failed): the tasks held for it, once; else None."""
        if self.state != "starting" or not self._done.is_set():
            return None
        self.state = "ready" if self.shelf is not None else "failed"
        held, self.held = self.held, []
        return held

    # ---- requests from clients ------------------------------------------------
    def fetch(self, identity: bytes, message: d.FetchResult) -> None:
        def read() -> Reply:
            if self.shelf is None:
                return identity, d.FetchedResult(request=message.request, error=self._unavailable())
            try:
                data = self.shelf.get(message.key, message.manager)
            except KeyError:
                return identity, d.FetchedResult(request=message.request, error="evicted, or never kept here")
            except Exception as exc:
                logger.exception("Reading kept result %s failed", message.key)
                return identity, d.FetchedResult(request=message.request, error=f"could not be read: {exc!r}")
            return identity, d.FetchedResult(request=message.request, payloads=[data])
        self._jobs.put(read)

    def evict(self, pairs: List[List[Any]]) -> None:
        def drop() -> None:
            for key, manager in pairs:
                if self.shelf is not None and not self.shelf.delete(str(key), int(manager)):
                    logger.debug("Evict: kept result %s was not there", key)
        self._jobs.put(drop)

    def poll(self, broadcast: Callable[[d.StoreReady], None], resubmit: Callable[[Held], None],
             reply: Callable[[bytes, d.FetchedResult], None]) -> None:
        """The service loop's turn (the pipe woke it): a shelf that just started is announced to
        every worker, then the held tasks go on; finished reads are answered."""
        held = self.started()
        if held is not None:
            message = self.ready_message()
            if message is not None:
                broadcast(message)
            for item in held:
                resubmit(item)
        for identity, message in self.finished():
            reply(identity, message)

    def finished(self) -> List[Reply]:
        """Replies to reads that are done (call when :attr:`wakeup` is readable)."""
        try:
            while os.read(self.wakeup, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            replies, self._replies = self._replies, []
        return replies

    def _unavailable(self) -> str:
        return self.why_failed or "this block keeps no results"

    # ---- the I/O thread ------------------------------------------------------
    def _io_loop(self) -> None:
        try:
            make = self._make_shelf or _dragon_shelf
            self.shelf = make(self.nodes, self.bytes_per_node, self.directory)
            logger.info("Kept-results shelf up: %d node(s) x %d bytes", self.nodes, self.bytes_per_node)
        except Exception as exc:
            self.why_failed = f"the block's kept-results store could not be created: {exc!r}"
            logger.error("%s; results travel to the driver instead", self.why_failed)
        self._done.set()
        self._wake()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                reply = job()
            except Exception:
                logger.exception("Kept-results job failed")
                continue
            if reply is not None:
                with self._lock:
                    self._replies.append(reply)
                self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_fd, b"x")
        except OSError:
            pass

    def close(self) -> None:
        """Stop the I/O thread and destroy the shelf (waits for a start under way)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=120)
        if self.shelf is not None:
            self.shelf.close()
            self.shelf = None
        for fd in (self.wakeup, self._wake_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def _dragon_shelf(nodes: int, bytes_per_node: int, directory: str) -> Any:
    from parsl_dragon.server.shelf import Shelf  # Dragon's DDict: imported only when a block keeps results
    return Shelf.create(nodes, bytes_per_node, directory)
