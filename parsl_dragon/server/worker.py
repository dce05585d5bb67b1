"""A persistent worker process: runs Parsl tasks sent by its server, one at a time.

Started by Dragon (see ``backend``) as ``python -m parsl_dragon.server.worker HOST``
with its link address and CURVE keys in the environment. Loop::

    recv SubmitTasks  -> local queue
    run one task      -> Parsl's execute_task(), kept results among its arguments read first
                         (task/kept.py), its GPUs bound (task/devices.py); result or
                         RemoteExceptionWrapper serialized; where the result may be kept, in the
                         kept form (task/codec.py: arrays' memory apart); a result to keep
                         (``keep_result``, or as large as ``StoreReady.keep_over``) goes on this
                         node's shelf and only where it is travels (status KEPT); a full shelf,
                         or smaller than ``keep_over``: it travels, in that form
    flush TaskResults -> when the local queue is empty, 64 results or 64 MiB wait, or 20 ms passed;
                         and before a result is kept, naming it ``released``: the server sends
                         the next task while the result is stored

When the link drops and comes back (the worker's socket monitor sees it), the worker
sends ``WorkerResync``; the server answers with the tasks it thinks this worker has
(``ResyncMark``), and those the worker neither holds nor answered since are failed with
``TaskLost``: a task or a result inside the dead connection is never waited for in silence.

Results are batched so that short tasks cost one message per batch, not per task, and a
batch goes out once it holds 64 MiB. A result of any size travels (``wire/frames.py`` splits
it into frames the links carry) up to ``max_payload_bytes`` (the server passes it in
``PARSL_DRAGON_MAX_PAYLOAD``); a larger one is never sent: the task fails with
``PayloadTooLarge`` naming its size and the limit, and the worker goes on.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections import deque
from typing import Any, Deque, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import zmq
from zmq.utils.monitor import recv_monitor_message

from parsl_dragon.errors import PAYLOAD_TOO_LARGE, SERIALIZATION_ERROR, TASK_LOST, ConfigurationError, RankFailure
from parsl_dragon.host.memory import default_max_payload_bytes, keep_freed_heap
from parsl_dragon.server import pmi
from parsl_dragon.task import codec, kept
from parsl_dragon.task.devices import block_accelerators, devices_per_host, gpu_binding, gpu_runtime_loaded
from parsl_dragon.task.mpi_env import mpi_task, read_report
from parsl_dragon.task.rank_service import RankService
from parsl_dragon.vocabulary import ENV_MAX_PAYLOAD, parse_bytes
from parsl_dragon.wire import dataplane as d
from parsl_dragon.wire import frames
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.security import make_worker_link

logger = logging.getLogger(__name__)

FLUSH_COUNT = 64
FLUSH_BYTES = 64 << 20  # a batch of large results goes out without waiting for more
FLUSH_SECONDS = 0.02


def _with_rank_failure(wrapper, report: Optional[str]):
    """An MPI bash app's failure (a RemoteExceptionWrapper around BashExitFailure, as Parsl's
    bash wrapper returns it) becomes a RankFailure naming the ranks the launcher recorded."""
    from parsl.app.errors import BashExitFailure, RemoteExceptionWrapper

    if report is None or not isinstance(wrapper, RemoteExceptionWrapper) \
            or not issubclass(wrapper.e_type, BashExitFailure):
        return wrapper
    failed, error = read_report(report)
    if not failed and not error:
        return wrapper
    original = wrapper.e_value
    enriched = RemoteExceptionWrapper(RankFailure, RankFailure(original.app_name, original.exitcode, failed, error),
                                      None)
    enriched.e_traceback = wrapper.e_traceback
    return enriched


def _exit_as_error(exc: SystemExit):
    """A task's ``sys.exit()`` as an ordinary exception: re-raised on the driver, SystemExit itself
    would escape the ``except Exception`` handlers of Parsl and leave the task's future unresolved."""
    from parsl.app.errors import AppException

    error = AppException(f"the task called sys.exit({exc.code!r})")
    error.__cause__ = exc
    return AppException, error, exc.__traceback__


Outcome = Union[bytes, codec.Encoded]


def run_task(payload: bytes, report: Optional[str] = None, keepable: bool = False) -> Tuple[str, Outcome, str, str]:
    """Execute one packed Parsl task (kept results among its arguments read first: task/kept.py);
    return (status, serialized outcome, error text, the value's class as ``module:qualname``).
    A ``keepable`` task's value comes in the kept form (``codec.Encoded``), unless it is an error."""
    from parsl.app.errors import RemoteExceptionWrapper
    from parsl.serialize import serialize

    try:
        result = _with_rank_failure(kept.execute_task(payload), report)
        if keepable and not isinstance(result, RemoteExceptionWrapper):
            return p.OK, codec.encode(result), "", kept.class_name(result)
        return p.OK, serialize(result, buffer_threshold=frames.NO_SERIALIZER_WARNING), "", kept.class_name(result)
    except (Exception, SystemExit) as exc:
        info = _exit_as_error(exc) if isinstance(exc, SystemExit) else sys.exc_info()
        try:
            wrapper = _with_rank_failure(RemoteExceptionWrapper(*info), report)
            return p.EXCEPTION, serialize(wrapper), "", ""
        except Exception as exc:  # the exception itself could not be serialized
            return p.FAILED, b"", f"task raised an exception that could not be serialized: {exc!r}", ""


def max_payload_bytes(env: Mapping[str, str]) -> int:
    """The largest result this worker sends: the server's ``PARSL_DRAGON_MAX_PAYLOAD``, else the default."""
    try:
        return parse_bytes(env.get(ENV_MAX_PAYLOAD, ""), ENV_MAX_PAYLOAD)
    except ConfigurationError:
        return default_max_payload_bytes()


def lost_in_flight(assigned: Iterable[int], held: Set[int]) -> List[int]:
    """The tasks the server has sent us (``assigned``) that we neither hold nor answered
    after our ``WorkerResync``: lost in the dropped connection, one way or the other."""
    return sorted(set(assigned) - held)


class Worker:
    """One worker's link to its server and its local task queue."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.worker_id = f"{host}:{os.getpid()}"
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, self.worker_id.encode())
        self.socket.setsockopt(zmq.LINGER, 2000)
        address = make_worker_link(self.socket, os.environ)
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.socket.connect(address)
        self.link_down = False
        self.answered_since_resync: Optional[Set[int]] = None  # None: no re-sync under way
        self.queue: Deque[Tuple[p.TaskEntry, bytes]] = deque()
        self.results: List[p.TaskResult] = []
        self.payloads: List[bytes] = []
        self.batch_bytes = 0
        self.stopping = False
        self.retiring = False  # a GPU runtime bound this process to one task's devices: exit, be replaced
        self.ranks: Optional[RankService] = None  # opened at the first task whose ranks Dragon starts
        self.accelerators = block_accelerators()  # what the slot table's GPU numbers stand for
        self.max_payload = max_payload_bytes(os.environ)
        self.shelf: Any = None  # the block's kept results (server/shelf.py), once StoreReady names it
        self.keep_over = -1

    def run(self) -> None:
        puid = int(os.environ.get("DRAGON_MY_PUID", "0") or 0)
        self._send(p.WorkerReady(worker_id=self.worker_id, host=self.host, pid=os.getpid(), puid=puid))
        last_flush = time.monotonic()
        while not (self.stopping and not self.queue):
            self._receive(block=not self.queue)
            if self.queue:
                self._run_one()
            due = time.monotonic() - last_flush > FLUSH_SECONDS
            full = len(self.results) >= FLUSH_COUNT or self.batch_bytes >= FLUSH_BYTES
            if self.results and (not self.queue or full or due):
                self._flush()
                last_flush = time.monotonic()
        self._flush()
        if self.ranks is not None:
            self.ranks.close()
        if self.shelf is not None:
            self.shelf.close()
        self.context.destroy(linger=2000)

    def _receive(self, block: bool) -> None:
        timeout = 1000 if block else 0
        while True:
            events = dict(self.poller.poll(timeout))
            if not events:
                return
            timeout = 0
            if self.monitor in events:
                self._on_link_event(recv_monitor_message(self.monitor)["event"])
            if self.socket in events:
                try:
                    message = p.decode(self.socket.recv_multipart())
                except p.ProtocolError as exc:
                    logger.warning("Ignoring malformed message from server: %s", exc)
                    continue
                self._on_message(message)

    def _on_message(self, message: p.Message) -> None:
        if isinstance(message, p.SubmitTasks):
            self.queue.extend(zip(message.tasks, message.payloads))
        elif isinstance(message, p.StopWorker):
            self.stopping = True
        elif isinstance(message, p.ResyncMark):
            self._on_resync_mark(message)
        elif isinstance(message, d.StoreReady):
            self._on_store_ready(message)

    def _on_store_ready(self, message: d.StoreReady) -> None:
        from parsl_dragon.server.shelf import Shelf  # Dragon's DDict, only in blocks that keep results
        try:
            self.shelf = Shelf.attach(message.descriptor, message.pools)
        except Exception:
            logger.exception("Could not attach the block's kept-results store; results travel instead")
            return
        self.keep_over = message.keep_over
        kept.register_reader(message.server_id, lambda ref: self.shelf.get(ref.key, ref.manager))

    def _on_link_event(self, event: int) -> None:
        if event == zmq.EVENT_DISCONNECTED and not self.link_down:
            self.link_down = True
            logger.warning("Link to the server dropped; reconnecting")
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self.link_down:
            self.link_down = False
            logger.warning("Link to the server is back: re-syncing")
            self._flush()  # results computed so far go ahead of the question
            self.answered_since_resync = set()
            self._send(p.WorkerResync(worker_id=self.worker_id))

    def _on_resync_mark(self, message: p.ResyncMark) -> None:
        if self.answered_since_resync is None:
            return
        held = {entry.task_id for entry, _ in self.queue} | {r.task_id for r in self.results}
        lost = lost_in_flight(message.assigned, held | self.answered_since_resync)
        self.answered_since_resync = None
        if lost:
            logger.error("Tasks lost in the dropped link: %s", lost)
        for task_id in lost:
            self.results.append(p.TaskResult(
                task_id=task_id, status=p.FAILED, host=self.host, error_type=TASK_LOST,
                error=f"the task or its result was lost in flight when the link of worker {self.worker_id} "
                      "dropped; it may be retried"))
            self.payloads.append(b"")

    def _run_one(self) -> None:
        entry, payload = self.queue.popleft()
        devices = devices_per_host(entry.placement, self.accelerators) if entry.spec.gpus_per_rank else []
        keepable = self.shelf is not None and self._keeps(entry.spec, None)
        with gpu_binding(devices[0] if devices else ()):
            if entry.spec.is_mpi and entry.placement is not None:
                status, encoded, error, kind = self._run_mpi(entry, payload, devices, keepable)
            else:
                status, encoded, error, kind = run_task(payload, keepable=keepable)
        if entry.spec.gpus_per_rank and not self.retiring:
            self._retire_if_bound(entry.task_id)
        result = p.TaskResult(task_id=entry.task_id, status=status, host=self.host,
                              error_type=SERIALIZATION_ERROR if error else "", error=error)
        outcome = encoded
        if isinstance(encoded, codec.Encoded) and self._keeps(entry.spec, encoded.nbytes):
            self._release(entry)
            outcome = self._keep(result, encoded, kind)
        elif isinstance(encoded, codec.Encoded):
            outcome = encoded.joined()
        elif status == p.OK and entry.spec.keep_result and self.shelf is None:
            result.unkept = "the block's kept-results store is not available"
        too_large = frames.payload_error(f"the result of task {entry.task_id}", len(outcome), self.max_payload)
        if too_large:
            logger.error("%s", too_large)
            result.status, outcome, result.error_type, result.error = p.FAILED, b"", PAYLOAD_TOO_LARGE, too_large
        self.results.append(result)
        self.payloads.append(outcome)
        self.batch_bytes += len(outcome)

    def _keeps(self, spec, nbytes: Optional[int]) -> bool:
        """Whether a result stays in the block: the task asks, or it is as large as the threshold
        (``nbytes`` None: whether it may, before its size is known)."""
        if spec.keep_result is not None:
            return spec.keep_result
        return self.keep_over >= 0 and (nbytes is None or nbytes >= self.keep_over)

    def _release(self, entry: p.TaskEntry) -> None:
        """Tell the server this task's slot is free while its result is stored, so the next task is
        on its way meanwhile (results so far go along). Only a serial task without GPUs, in a worker
        that stays: its function has returned, nothing of it runs any more."""
        if not (entry.spec.is_mpi or entry.spec.gpus_per_rank or self.retiring):
            self._flush(released=[entry.task_id])

    def _keep(self, result: p.TaskResult, encoded: codec.Encoded, kind: str) -> bytes:
        """Put the result on this node's shelf; what is left to send (nothing, or the result itself
        if it could not be kept: ``unkept`` says why)."""
        key = f"t{result.task_id}"
        nbytes = encoded.nbytes
        try:
            manager = self.shelf.put(key, encoded.parts)
        except Exception as exc:  # ShelfFull, or the DDict refused: the result travels instead
            result.unkept = f"the block's kept-results store could not take {nbytes} bytes: {exc}"
            logger.warning("Task %d: %s", result.task_id, result.unkept)
            return encoded.joined()
        result.status = p.KEPT
        result.kept = d.KeptEntry(key, manager, nbytes, kind).to_wire()
        return b""

    def _retire_if_bound(self, task_id: int) -> None:
        """A GPU runtime initialized in this process keeps the devices it saw: retire (task/devices.py)."""
        library = gpu_runtime_loaded()
        if library is not None:
            logger.info("Task %d left a GPU runtime (%s) in this worker: retiring; a fresh worker replaces it",
                        task_id, library)
            self.retiring = self.stopping = True

    def _run_mpi(self, entry: p.TaskEntry, payload: bytes, devices: List[List[str]],
                 keepable: bool) -> Tuple[str, Outcome, str, str]:
        """Run an MPI task with its variables; serve its launches if Dragon starts its ranks."""
        problem = pmi.problem(entry.spec.pmi, os.environ)
        served = problem is None and entry.spec.pmi != "mpiexec"
        with mpi_task(entry.task_id, entry.spec, entry.placement, problem, devices) as task:
            if served:
                if self.ranks is None or not self.ranks.alive:  # a service that failed is replaced
                    self.ranks = RankService(self.worker_id)
                self.ranks.begin(task)
            try:
                return run_task(payload, task.report, keepable)
            finally:
                if served:
                    self.ranks.end(task)

    def _flush(self, released: Sequence[int] = ()) -> None:
        if self.results or released:
            self._send(p.TaskResults(results=self.results, payloads=self.payloads, retiring=self.retiring,
                                     released=list(released)))
            if self.answered_since_resync is not None:
                self.answered_since_resync.update(r.task_id for r in self.results)
            self.results, self.payloads, self.batch_bytes = [], [], 0

    def _send(self, message: p.Message) -> None:
        self.socket.send_multipart(p.encode(message))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    keep_freed_heap()  # arrays read and unpickled reuse freed memory instead of faulting in fresh pages
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    host = sys.argv[1] if len(sys.argv) > 1 else os.uname().nodename
    try:
        Worker(host).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
