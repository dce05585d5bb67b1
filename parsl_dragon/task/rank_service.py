"""The worker's side of ``$PARSL_MPI_PREFIX`` for ranks Dragon starts (pmi none, cray, pmix).

The prefix (``task/prefix.sh``) is a bash script: it writes its pid into the task's launch
FIFO and waits on its own reply FIFO. This service, one thread of the worker, does the rest::

    prefix.sh (bash)                 RankService (worker thread)                    server
    "<pid>\\n" -> <dir>/launch  ----> argv, env, cwd from /proc/<pid>
                                     LaunchRanks(task, argv, cwd, env, launch) ---> ranks (Dragon)
                                     <---------------------------------------- RanksDone(launch)
    cat <dir>/out.<pid>, err.<pid> <- each rank's lines, labelled "[rank N]"
    exit <code>                    <- "<code>\\n" -> <dir>/reply.<pid>; failures -> the rank report

Its rank link is a second DEALER to the server's worker socket with the worker's CURVE keys
(identity ``<worker id>/ranks``), opened at the worker's first such task and kept: a launch
pays no interpreter start and no handshake. The main thread, which runs the task, only says
when a task begins and ends (:meth:`RankService.begin`, :meth:`RankService.end`), through a
queue and a wake-up pipe; every socket and FIFO belongs to the service's thread.

No launch waits for a server that is not there::

    link not up within PARSL_DRAGON_TIMEOUT of a request   -> that launch fails (exit 1)
    the server refuses the worker's key                    -> pending launches fail at once
    link drops while ranks run                             -> pending launches fail at once
    the task ends with launches pending                    -> they are forgotten (the server stops
                                                              the task's ranks)
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, TextIO, Tuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from parsl_dragon.task.mpi_env import MpiTask, note_failures
from parsl_dragon.vocabulary import (
    DEFAULT_TIMEOUT_MS,
    ENV_TASK,
    ENV_TIMEOUT,
    ENV_WORKER_SECRET,
    RANK_LINK_SUFFIX,
    parse_timeout_ms,
    timeout_seconds,
)
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.security import make_worker_link

logger = logging.getLogger(__name__)

_LINK_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
_HIDDEN = (ENV_WORKER_SECRET,)


@dataclass
class _Open:
    """A running MPI task whose launch FIFO the service reads."""

    task: MpiTask
    fd: int
    buffer: bytes = b""


@dataclass
class _Launch:
    task: MpiTask
    pid: int
    sent: float


def read_request(pid: int, task_id: int) -> Tuple[List[str], str, Dict[str, str]]:
    """What the prefix with ``pid`` asks for: the command after ``prefix.sh dragon``, its working
    directory and environment (less the worker's secret key), from ``/proc/<pid>``.

    Raises OSError if the process is gone, ValueError if it is not a prefix of task ``task_id``."""
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        words = [os.fsdecode(w) for w in handle.read().split(b"\0")[:-1]]
    with open(f"/proc/{pid}/environ", "rb") as handle:
        pairs = [os.fsdecode(item).partition("=") for item in handle.read().split(b"\0") if item]
    cwd = os.readlink(f"/proc/{pid}/cwd")
    env = {name: value for name, _, value in pairs if name not in _HIDDEN}
    if env.get(ENV_TASK) != str(task_id):
        raise ValueError(f"process {pid} is not a $PARSL_MPI_PREFIX of task {task_id}")
    try:
        argv = words[words.index("dragon") + 1:]
    except ValueError:
        raise ValueError(f"process {pid} is not running prefix.sh dragon: {words[:3]}") from None
    return argv, cwd, env


def relay_output(done: p.RanksDone, directory: str, pid: int) -> None:
    """Write each rank's output, lines labelled, to ``out.<pid>`` / ``err.<pid>`` in ``directory``
    (files made only when there is output); then remove the server's output directory."""
    for suffix in ("out", "err"):
        target: Optional[TextIO] = None
        try:
            for index, label in enumerate(done.labels):
                path = os.path.join(done.output_dir, f"rank-{index}.{suffix}")
                try:
                    source = open(path, errors="replace")
                except OSError:
                    continue
                with source:
                    for line in source:
                        if target is None:
                            target = open(os.path.join(directory, f"{suffix}.{pid}"), "w")
                        target.write(f"[{label}] {line.rstrip(chr(10))}\n")
        finally:
            if target is not None:
                target.close()
    if done.output_dir:
        shutil.rmtree(done.output_dir, ignore_errors=True)


def exit_code(failed: List[Tuple[str, int]]) -> int:
    """0, or the first failing rank's code (1 when it is not an exit status)."""
    if not failed:
        return 0
    code = failed[0][1]
    return code if 0 < code < 256 else 1


class RankService:
    """One worker's rank link and the launch FIFOs of its running MPI tasks."""

    def __init__(self, worker_id: str, env: Mapping[str, str] = os.environ) -> None:
        self.worker_id = worker_id
        self.env = dict(env)
        value = self.env.get(ENV_TIMEOUT, "").strip()
        self.handshake_ms = parse_timeout_ms(value, ENV_TIMEOUT) if value else DEFAULT_TIMEOUT_MS
        self._commands: "queue.SimpleQueue[Tuple[str, object]]" = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._open: Dict[int, _Open] = {}       # FIFO fd -> task
        self._pending: Dict[int, _Launch] = {}  # launch number -> who waits
        self._outbox: List[Tuple[int, List[bytes]]] = []  # (task, request) the link could not take yet
        self._next = 0
        self._link_up = False
        self._refused = ""  # why the server refused the link (until a handshake succeeds)
        self._address = ""
        self._thread = threading.Thread(target=self._run, name="rank-service", daemon=True)
        self._thread.start()

    # ---- the task's thread -------------------------------------------------------------------
    def begin(self, task: MpiTask) -> None:
        """Serve launches of ``task`` (a running MPI task): make its launch FIFO."""
        os.mkfifo(task.launch_fifo, 0o600)
        fd = os.open(task.launch_fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)  # never sees EOF
        self._command("begin", _Open(task, fd))

    def end(self, task: MpiTask) -> None:
        """``task`` is over: stop reading its FIFO, forget its launches."""
        self._command("end", task.task_id)

    @property
    def alive(self) -> bool:
        """False once the service's thread has ended (stopped, or failed: a new one is needed)."""
        return self._thread.is_alive()

    def close(self) -> None:
        self._command("stop", None)
        self._thread.join(timeout=5)

    def _command(self, what: str, argument: object) -> None:
        self._commands.put((what, argument))
        os.write(self._wake_w, b"x")

    # ---- the service's thread ----------------------------------------------------------------
    def _run(self) -> None:
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, (self.worker_id + RANK_LINK_SUFFIX).encode())
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(_LINK_EVENTS)
        self._address = make_worker_link(sock, self.env)
        sock.connect(self._address)
        poller = zmq.Poller()
        for item in (sock, monitor, self._wake_r):
            poller.register(item, zmq.POLLIN)
        try:
            while self._serve(poller, sock, monitor):
                pass
        except Exception:
            logger.exception("The rank service failed; launches of this worker's MPI tasks fail from now on")
            self._fail_all("the worker's rank service failed (see the worker's log)")
        finally:
            for item in list(self._open.values()):
                os.close(item.fd)
            self._open.clear()
            context.destroy(linger=0)

    def _serve(self, poller: zmq.Poller, sock: zmq.Socket, monitor: zmq.Socket) -> bool:
        events = dict(poller.poll(self._poll_ms()))
        if monitor in events:
            self._on_link_event(recv_monitor_message(monitor)["event"])
        if sock in events:
            while sock.poll(0):
                self._guarded(self._on_message, sock.recv_multipart())
        for fd in [fd for fd in self._open if fd in events]:
            self._guarded(self._on_fifo, self._open[fd])
        if self._wake_r in events and not self._on_commands(poller):
            return False
        self._expire()
        self._send_outbox(sock)
        return True

    @staticmethod
    def _guarded(handler, *args) -> None:
        """One request or reply that cannot be handled never stops the service."""
        try:
            handler(*args)
        except Exception:
            logger.exception("The rank service could not handle %s; it goes on", handler.__name__)

    def _send_outbox(self, sock: zmq.Socket) -> None:
        """Send what waits, never blocking: a DEALER between two connections has no peer, and a
        blocking send would stall the service (and every launch) until the link is back."""
        while self._outbox:
            try:
                sock.send_multipart(self._outbox[0][1], zmq.NOBLOCK)
            except zmq.Again:
                return
            self._outbox.pop(0)

    def _on_commands(self, poller: zmq.Poller) -> bool:
        os.read(self._wake_r, 4096)
        while True:
            try:
                what, argument = self._commands.get_nowait()
            except queue.Empty:
                return True
            if what == "stop":
                return False
            if isinstance(argument, _Open):  # "begin"
                self._open[argument.fd] = argument
                poller.register(argument.fd, zmq.POLLIN)
            elif what == "end":
                self._forget(poller, int(argument))  # type: ignore[arg-type]

    def _forget(self, poller: zmq.Poller, task_id: int) -> None:
        for fd, item in list(self._open.items()):
            if item.task.task_id == task_id:
                poller.unregister(fd)
                os.close(fd)
                del self._open[fd]
        for launch, waiting in list(self._pending.items()):
            if waiting.task.task_id == task_id:
                del self._pending[launch]
        self._outbox = [(task, frames) for task, frames in self._outbox if task != task_id]

    def _on_fifo(self, item: _Open) -> None:
        try:
            item.buffer += os.read(item.fd, 4096)
        except BlockingIOError:
            return
        *lines, item.buffer = item.buffer.split(b"\n")
        for line in lines:
            try:
                pid = int(line)
                argv, cwd, env = read_request(pid, item.task.task_id)
            except (ValueError, OSError) as exc:
                logger.warning("Ignoring a launch request of task %d: %s", item.task.task_id, exc)
                continue
            self._next += 1
            self._pending[self._next] = _Launch(item.task, pid, time.monotonic())
            if self._refused:  # no new handshake will say so again
                self._fail_all(self._refused)
                continue
            self._outbox.append((item.task.task_id, p.encode(p.LaunchRanks(
                task_id=item.task.task_id, argv=argv, cwd=cwd, env=env, launch=self._next))))

    def _on_message(self, frames: List[bytes]) -> None:
        try:
            message = p.decode(frames)
        except p.ProtocolError as exc:
            logger.warning("Ignoring a malformed message on the rank link: %s", exc)
            return
        if not isinstance(message, p.RanksDone):
            logger.warning("Ignoring %s on the rank link", type(message).__name__)
            return
        waiting = self._pending.pop(message.launch, None)
        if waiting is None:  # its task ended, or it already failed
            if message.output_dir:
                shutil.rmtree(message.output_dir, ignore_errors=True)
            return
        if message.error:
            if message.output_dir:
                shutil.rmtree(message.output_dir, ignore_errors=True)
            self._answer(waiting, 1, [], message.error)
            return
        relay_output(message, waiting.task.directory, waiting.pid)
        failed = [(label, code) for label, code in zip(message.labels, message.exit_codes) if code != 0]
        self._answer(waiting, exit_code(failed), failed)

    def _on_link_event(self, event: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._link_up, self._refused = True, ""
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._refused = (f"the block's server at {self._address} refused this worker's key: the worker-link "
                             "variables are not those of that server (left from an earlier one?)")
            self._fail_all(self._refused)
        elif event == zmq.EVENT_DISCONNECTED and self._link_up:
            self._link_up = False
            self._fail_all(f"lost the link to the block's server at {self._address} while the ranks ran: the "
                           "server is gone or restarted the link, so their outcome can no longer reach this task")

    def _poll_ms(self) -> Optional[int]:
        if self._outbox:
            return 20
        limit = timeout_seconds(self.handshake_ms)
        if self._link_up or not self._pending or limit is None:
            return None
        oldest = min(w.sent for w in self._pending.values())
        return max(0, int((oldest + limit - time.monotonic()) * 1000) + 1)

    def _expire(self) -> None:
        """Launches sent while the link is not up fail once the handshake bound has passed."""
        limit = timeout_seconds(self.handshake_ms)
        if self._link_up or limit is None:
            return
        now = time.monotonic()
        for launch, waiting in list(self._pending.items()):
            if now - waiting.sent > limit:
                del self._pending[launch]
                self._answer(waiting, 1, [], (
                    f"no answer from the block's server at {self._address} within {limit:g} s (the CURVE handshake "
                    "did not complete): check that the block is still running; if the server is only slow, "
                    f"raise {ENV_TIMEOUT} (milliseconds, -1: no limit)"))

    def _fail_all(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            self._answer(waiting, 1, [], why)

    def _answer(self, waiting: _Launch, code: int, failed: List[Tuple[str, int]], error: str = "") -> None:
        """Note failures in the task's rank report, say why on the prefix's stderr, then reply."""
        directory, pid = waiting.task.directory, waiting.pid
        try:
            note_failures(waiting.task.report, failed, error)
            if error:
                with open(os.path.join(directory, f"err.{pid}"), "a") as handle:
                    handle.write(f"$PARSL_MPI_PREFIX (parsl-dragon): {error}\n")
        except OSError as exc:  # the task's directory is gone: nobody is waiting any more
            logger.warning("Could not note the outcome of task %d's launch: %s", waiting.task.task_id, exc)
        reply = os.path.join(directory, f"reply.{pid}")
        try:
            fd = os.open(reply, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:  # ENXIO: the prefix stopped waiting; ENOENT: it never made its FIFO
            logger.info("No prefix waits at %s any more (%s)", reply, exc.strerror)
            return
        try:
            os.unlink(reply)  # first: once it has its answer the prefix may exit and its task end
            os.write(fd, f"{code}\n".encode())
        except OSError as exc:  # the task's directory went with its task
            logger.info("Could not answer at %s (%s)", reply, exc.strerror)
        finally:
            os.close(fd)
