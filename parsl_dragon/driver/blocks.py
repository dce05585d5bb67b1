"""Blocks: from "the provider accepted the job" to "a server answers", and the end of their jobs.

A block's server announces itself by writing its connection file. The watcher
waits for the file of *this launch* (its ``launch_id``; at a shared ``server_path``
another driver's server may have published first, and then ours publishes in the
block directory), while checking the provider's job state, until the start-up timeout.
Failures become :class:`ServerStartupError` with the block's log files and their last
lines, so the user sees why.

:class:`BlockWatch` does this for the executor, one watcher thread per launch::

    executor (Parsl's strategy thread)       BlockWatch
    _get_launch_command(block_id) ------->   command(): a BlockLaunch, its block directory, boot_command()
    _launch_block(block_id) -> job id --->   watch(): thread "parsl-dragon-block-<id>"
                                                 wait_for_server() -> connect(info) -> on_server(link, block_id)
                                                 any failure ------------------------> on_failed(launch, error)
    scale_in() / shutdown() ------------->   end_jobs(): wait for the jobs to end, then cancel them
    a lost block's server --------------->   cancel_in_background(): cancel its job on a thread of its own

Instead of launching blocks, an executor with a ``server_path`` first looks for a live server
there (:func:`shared_server`).
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set

from parsl.jobs.states import TERMINAL_STATES, JobState, JobStatus
from parsl.providers import LocalProvider
from parsl.providers.base import ExecutionProvider

from parsl_dragon.driver.settings import Settings
from parsl_dragon.errors import ConfigurationError, DragonExecutorError, InsecurePath, ServerStartupError
from parsl_dragon.host import startup
from parsl_dragon.vocabulary import BOOT_MODULE, LOOPBACK
from parsl_dragon.wire import security
from parsl_dragon.wire.connection import ConnectionInfo, connection_path, read_connection, remove_connection

if TYPE_CHECKING:
    from parsl_dragon.driver.links import ServerLink

logger = logging.getLogger(__name__)

LOG_NAMES = ("boot.log", "dragon.log", "server.log")
POLL_SECONDS = 0.02  # looking for the connection file costs one failed open() per place: look often
STATUS_EVERY_SECONDS = 2.0


@dataclass
class BlockLaunch:
    """What the executor knows about a block it asked the provider for."""

    block_id: str
    block_dir: str
    connection_file: str
    launched: float
    job_id: Optional[str] = None
    launch_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this launch's server
    noted: Dict[str, float] = field(default_factory=dict)  # the driver's start-up milestones (host/startup.py)

    def note(self, milestone: str, at: Optional[float] = None) -> None:
        """Note a start-up milestone of this launch (the first time only)."""
        self.noted.setdefault(milestone, time.time() if at is None else at)

    def log_files(self) -> List[str]:
        return [os.path.join(self.block_dir, name) for name in LOG_NAMES]

    def connection_files(self) -> List[str]:
        """Where this launch's server may publish: the configured file, else its block directory."""
        return list(dict.fromkeys([self.connection_file, connection_path(self.block_dir)]))


def boot_command(launch: BlockLaunch, key_path: str, transport: str, server_options: Dict[str, object],
                 python: str = sys.executable, driver_pid: Optional[int] = None) -> str:
    """The shell command a provider runs for one block: boot -> dragon -> our server.

    ``server_options`` become ``--name value`` flags of the server (``None`` values are
    left out, ``True`` becomes a bare flag), e.g. ``{"host_address": "auto", "debug": True}``;
    timeouts are passed as ``*_ms`` flags with ``-1`` for no limit, as everywhere.
    ``driver_pid`` (blocks on the driver's own host) makes the block follow its driver:
    boot stops the runtime as soon as that process is gone.
    """
    args = [python, "-m", BOOT_MODULE, "--block-dir", launch.block_dir,
            "--transport", transport]
    if driver_pid is not None:
        args += ["--driver-pid", str(driver_pid)]
    args += ["--",
             "--connection-file", launch.connection_file,
             "--log-file", os.path.join(launch.block_dir, "server.log"),
             "--key-dir", key_path, "--block-id", launch.block_id, "--launch-id", launch.launch_id]
    for name, value in server_options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not None and value is not False:
            args += [flag, str(value)]
    return " ".join(shlex.quote(a) for a in args)


def tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def startup_error(launch: BlockLaunch, reason: str) -> ServerStartupError:
    """A start-up error that names the block, the reason and where to look."""
    parts = [f"block {launch.block_id} did not start a Dragon server: {reason}.",
             f"Logs: {', '.join(launch.log_files())}"]
    for path in launch.log_files():
        text = tail(path).strip()
        if text:
            parts.append(f"--- last lines of {os.path.basename(path)}:\n{text}")
    return ServerStartupError("\n".join(parts))


def _fresh_connection(launch: BlockLaunch) -> Optional[ConnectionInfo]:
    """The connection file written by this launch's server, if it is there yet."""
    for path in launch.connection_files():
        try:
            info = read_connection(path)
        except FileNotFoundError:
            continue
        except InsecurePath:
            raise
        except ConfigurationError:
            continue  # being replaced right now, or damaged: look again
        if info.launch_id == launch.launch_id:
            return info
    return None


def ended_error(launch: BlockLaunch, status: Optional[JobStatus]) -> Optional[ServerStartupError]:
    """The start-up error of a launch whose job ended before its server came up; else None."""
    if status is None or status.state not in TERMINAL_STATES or _fresh_connection(launch) is not None:
        return None
    return startup_error(launch, f"the block's job ended ({status.status_name}"
                                 f"{': ' + status.message if status.message else ''}) before its server came up")


def wait_for_server(launch: BlockLaunch, timeout_s: Optional[float],
                    job_status: Callable[[], Optional[JobStatus]],
                    cancelled: Callable[[], bool]) -> ConnectionInfo:
    """Block until the block's connection file appears; raise ServerStartupError otherwise."""
    deadline = None if timeout_s is None else launch.launched + timeout_s
    next_status = time.monotonic() + STATUS_EVERY_SECONDS
    while not cancelled():
        info = _fresh_connection(launch)
        if info is not None:
            return info
        if deadline is not None and time.time() > deadline:
            raise startup_error(launch, f"no server within the start-up timeout of {timeout_s:.0f}s "
                                        "(startup_timeout_ms / PARSL_DRAGON_STARTUP_TIMEOUT)")
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + STATUS_EVERY_SECONDS
            ended = ended_error(launch, job_status())
            if ended is not None:
                raise ended
        time.sleep(POLL_SECONDS)
    raise startup_error(launch, "the executor shut down while waiting")


def shared_server(server_path: str) -> Optional[ConnectionInfo]:
    """The server whose connection file is at ``server_path``, unless there is none or its pid
    is gone (then the stale file is removed)."""
    path = connection_path(server_path)
    try:
        info = read_connection(path)
    except FileNotFoundError:
        return None
    if info.pid_alive() is False:
        logger.warning("Removing stale connection file %s (server pid %d is gone)", path, info.pid)
        remove_connection(path, info.server_id)
        return None
    return info


def on_driver_host(provider: Optional[ExecutionProvider]) -> bool:
    """Blocks run on the driver's own host (a LocalProvider): they can follow the driver's pid."""
    return isinstance(provider, LocalProvider)


def host_address(address: Optional[str], provider: Optional[ExecutionProvider], spans_nodes: bool = False) -> str:
    """The address a block's server publishes: ``address`` if set; loopback for a block on the
    driver's own host alone; else ``auto``, resolved on whichever node Dragon starts the server."""
    if address:
        return address
    return LOOPBACK if on_driver_host(provider) and not spans_nodes else "auto"


class BlockWatch:
    """The blocks one executor launched: their boot commands, a watcher per launch, their jobs' end.

    ``connect(info)`` opens the session with a block's server, ``on_server(link, block_id)``
    takes it, ``on_failed(launch, error)`` hears of a block that produced no usable server,
    and ``cancelled()`` says the executor is shutting down (then watchers give up quietly).
    """

    def __init__(self, provider: Optional[ExecutionProvider], connect: Callable[[ConnectionInfo], "ServerLink"],
                 on_server: Callable[["ServerLink", str], None],
                 on_failed: Callable[[BlockLaunch, DragonExecutorError], None],
                 cancelled: Callable[[], bool]) -> None:
        self.provider = provider
        self.launches: Dict[str, BlockLaunch] = {}
        self._connect, self._on_server, self._on_failed = connect, on_server, on_failed
        self._cancelled = cancelled
        self._watchers: List[threading.Thread] = []
        self._by_server: Dict[str, BlockLaunch] = {}  # server id -> its launch, until its first result
        self._failed: Set[str] = set()  # launches reported to on_failed (once each)
        self._failing = threading.Lock()

    def command(self, block_id: str, executor_dir: str, settings: Settings, server_options: Dict[str, object],
                driver_pid: Optional[int]) -> str:
        """Record a launch of ``block_id`` and return its boot command. The first launch publishes
        at a shared ``server_path``; the others in their block directory."""
        block_dir = os.path.join(executor_dir, f"block-{block_id}")
        security.private_directory(block_dir)
        shared = settings.server_path is not None and not any(
            launch.connection_file == connection_path(settings.server_path) for launch in self.launches.values())
        conn_file = connection_path(settings.server_path if shared else block_dir)  # type: ignore[arg-type]
        launch = self.launches[block_id] = BlockLaunch(block_id, block_dir, conn_file, launched=time.time())
        launch.note(startup.BLOCK_SUBMITTED, at=launch.launched)
        return boot_command(launch, settings.key_path, settings.transport, server_options, driver_pid=driver_pid)

    def watch(self, block_id: str, job_id: Any, startup_timeout_s: Optional[float]) -> None:
        """The provider took the block's job: wait for its server on a thread of its own."""
        launch = self.launches[block_id]
        launch.job_id = job_id
        launch.note(startup.JOB_LAUNCHED)
        watcher = threading.Thread(target=self._watch, args=(launch, startup_timeout_s), daemon=True,
                                   name=f"parsl-dragon-block-{block_id}")
        self._watchers.append(watcher)
        watcher.start()

    def _watch(self, launch: BlockLaunch, startup_timeout_s: Optional[float]) -> None:
        try:
            info = wait_for_server(launch, startup_timeout_s, lambda: self.job_status(launch),
                                   cancelled=self._cancelled)
            launch.note(startup.CONNECTION_SEEN)
            launch.note(startup.SERVER_READY, at=info.created)
            link = self._connect(info)
            launch.note(startup.WELCOME)
            self._by_server[info.server_id] = launch
        except DragonExecutorError as exc:
            self._fail(launch, exc)
            return
        except Exception as exc:  # a bug must not leave the block unaccounted for
            logger.exception("Watcher of block %s failed", launch.block_id)
            self._fail(launch, ServerStartupError(f"block {launch.block_id}: {exc!r}"))
            return
        self._on_server(link, launch.block_id)

    def _fail(self, launch: BlockLaunch, error: DragonExecutorError) -> None:
        """Report a launch without a usable server to ``on_failed``, once (its watcher or a status poll)."""
        with self._failing:
            first = launch.block_id not in self._failed and not self._cancelled()
            self._failed.add(launch.block_id)
        if first:
            self._on_failed(launch, error)

    def fail_ended(self, status: Dict[str, JobStatus]) -> None:
        """Parsl's status poll saw these jobs: one that ended before its server ever answered fails
        its block now, naming the block's logs (a block launched by start() may end before its
        watcher looks)."""
        for block_id, job in status.items():
            launch = self.launches.get(block_id)
            error = ended_error(launch, job) if launch is not None and startup.WELCOME not in launch.noted else None
            if error is not None:
                self._fail(launch, error)  # type: ignore[arg-type]

    def results_from(self, server_id: str) -> None:
        """Results came from ``server_id``: the first ones are its block's last start-up milestone."""
        launch = self._by_server.pop(server_id, None)
        if launch is not None:
            launch.note(startup.FIRST_RESULT)
            logger.info("Block %s started: %s", launch.block_id, ", ".join(
                f"{name} +{seconds:.3f}s" for name, seconds in self.timeline(launch.block_id).since(launch.launched)))

    def timeline(self, block_id: str) -> startup.Timeline:
        """The start-up milestones of ``block_id``'s launch: the driver's and its block's own."""
        launch = self.launches[block_id]
        return startup.timeline(block_id, launch.block_dir, launch.noted)

    def job_status(self, launch: BlockLaunch) -> Optional[JobStatus]:
        """The provider's status of the launch's job; None if unknown (not submitted, or polling failed)."""
        if launch.job_id is None or self.provider is None:
            return None
        try:
            return self.provider.status([launch.job_id])[0]
        except Exception as exc:
            logger.warning("Could not poll job %s of block %s: %s", launch.job_id, launch.block_id, exc)
            return None

    def failed_status(self, launch: BlockLaunch, error: DragonExecutorError) -> JobStatus:
        """A block without a usable server: FAILED if its job ended, else MISSING (the job may
        run, but no server ever connected)."""
        job = self.job_status(launch)
        state = JobState.FAILED if job is not None and job.state in TERMINAL_STATES else JobState.MISSING
        return JobStatus(state, str(error))

    def cancel(self, launch: BlockLaunch) -> None:
        """Cancel the launch's job now, so that no half-started server stays behind."""
        if launch.job_id is not None and self.provider is not None:
            self.provider.cancel([launch.job_id])

    def cancel_in_background(self, block_id: str, job_id: Any) -> None:
        """Cancel a useless block's job on a thread of its own: frees the allocation, and its boot
        process cleans up whatever of the runtime is left."""
        provider = self.provider
        if provider is None:
            return

        def cancel() -> None:
            try:
                provider.cancel([job_id])
            except Exception as exc:
                logger.warning("Could not cancel job %s of lost block %s: %s", job_id, block_id, exc)
        threading.Thread(target=cancel, name=f"parsl-dragon-cancel-{block_id}", daemon=True).start()

    def end_jobs(self, job_ids: List[Any], wait_s: float) -> None:
        """Give the jobs ``wait_s`` seconds to end (their servers were asked to stop), then cancel them."""
        if not job_ids or self.provider is None:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if all(s.state in TERMINAL_STATES for s in self.provider.status(job_ids)):
                break
            time.sleep(0.2)
        self.provider.cancel(job_ids)

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for each watcher thread (after ``cancelled()`` turned true)."""
        for watcher in self._watchers:
            watcher.join(timeout=timeout)
