"""A persistent worker process: runs Parsl tasks sent by its server, one at a time.

Started by Dragon (see ``backend``) as ``python -m parsl_dragon.server.worker HOST``
with its link address and CURVE keys in the environment. Loop::

    recv SubmitTasks  -> local queue
    run one task      -> Parsl's execute_task(); result or RemoteExceptionWrapper serialized
    flush TaskResults -> when the local queue is empty, 64 results wait, or 20 ms passed

Results are batched so that short tasks cost one message per batch, not per task.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections import deque
from typing import Deque, List, Optional, Tuple

import zmq

from parsl_dragon import protocol as p
from parsl_dragon.errors import RankFailure
from parsl_dragon.mpi_env import mpi_task, read_report
from parsl_dragon.security import make_curve_client

logger = logging.getLogger("parsl_dragon.server.worker")

FLUSH_COUNT = 64
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


def run_task(payload: bytes, report: Optional[str] = None) -> Tuple[str, bytes, str]:
    """Execute one packed Parsl task; return (status, serialized outcome, error text)."""
    from parsl.app.errors import RemoteExceptionWrapper
    from parsl.executors.execute_task import execute_task
    from parsl.serialize import serialize

    try:
        result = _with_rank_failure(execute_task(payload), report)
        return p.OK, serialize(result, buffer_threshold=1_000_000), ""
    except (Exception, SystemExit) as exc:
        info = _exit_as_error(exc) if isinstance(exc, SystemExit) else sys.exc_info()
        try:
            wrapper = _with_rank_failure(RemoteExceptionWrapper(*info), report)
            return p.EXCEPTION, serialize(wrapper), ""
        except Exception as exc:  # the exception itself could not be serialized
            return p.FAILED, b"", f"task raised an exception that could not be serialized: {exc!r}"


class Worker:
    """One worker's link to its server and its local task queue."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.worker_id = f"{host}:{os.getpid()}"
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, self.worker_id.encode())
        self.socket.setsockopt(zmq.LINGER, 2000)
        make_curve_client(self.socket, os.environ["PARSL_DRAGON_WORKER_SECRET"].encode(),
                          os.environ["PARSL_DRAGON_WORKER_SERVER_KEY"].encode())
        self.socket.connect(os.environ["PARSL_DRAGON_WORKER_ADDRESS"])
        self.queue: Deque[Tuple[p.TaskEntry, bytes]] = deque()
        self.results: List[p.TaskResult] = []
        self.payloads: List[bytes] = []
        self.stopping = False

    def run(self) -> None:
        puid = int(os.environ.get("DRAGON_MY_PUID", "0") or 0)
        self._send(p.WorkerReady(worker_id=self.worker_id, host=self.host, pid=os.getpid(), puid=puid))
        last_flush = time.monotonic()
        while not (self.stopping and not self.queue):
            self._receive(block=not self.queue)
            if self.queue:
                self._run_one()
            due = time.monotonic() - last_flush > FLUSH_SECONDS
            if self.results and (not self.queue or len(self.results) >= FLUSH_COUNT or due):
                self._flush()
                last_flush = time.monotonic()
        self._flush()
        self.context.destroy(linger=2000)

    def _receive(self, block: bool) -> None:
        timeout = 1000 if block else 0
        while self.socket.poll(timeout, zmq.POLLIN):
            timeout = 0
            try:
                message = p.decode(self.socket.recv_multipart())
            except p.ProtocolError as exc:
                logger.warning("Ignoring malformed message from server: %s", exc)
                continue
            if isinstance(message, p.SubmitTasks):
                self.queue.extend(zip(message.tasks, message.payloads))
            elif isinstance(message, p.StopWorker):
                self.stopping = True

    def _run_one(self) -> None:
        entry, payload = self.queue.popleft()
        if entry.placement:
            with mpi_task(entry.task_id, entry.spec, entry.placement) as report:
                status, outcome, error = run_task(payload, report)
        else:
            status, outcome, error = run_task(payload)
        self.results.append(p.TaskResult(task_id=entry.task_id, status=status, host=self.host,
                                         error_type="SerializationError" if error else "", error=error))
        self.payloads.append(outcome)

    def _flush(self) -> None:
        if self.results:
            self._send(p.TaskResults(results=self.results, payloads=self.payloads))
            self.results, self.payloads = [], []

    def _send(self, message: p.Message) -> None:
        self.socket.send_multipart(p.encode(message))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    host = sys.argv[1] if len(sys.argv) > 1 else os.uname().nodename
    try:
        Worker(host).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
