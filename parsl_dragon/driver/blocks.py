"""Block start-up: from "the provider accepted the job" to "a server answers".

A block's server announces itself by writing its connection file. The watcher
waits for the file of *this launch* (its ``launch_id``; at a shared ``server_path``
another driver's server may have published first, and then ours publishes in the
block directory), while checking the provider's job state, until the start-up timeout.
Failures become :class:`ServerStartupError` with the block's log files and their last
lines, so the user sees why.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from parsl.jobs.states import TERMINAL_STATES, JobStatus

from parsl_dragon.errors import ConfigurationError, InsecurePath, ServerStartupError
from parsl_dragon.wire.connection import ConnectionInfo, connection_path, read_connection

LOG_NAMES = ("boot.log", "dragon.log", "server.log")
POLL_SECONDS = 0.1
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
    args = [python, "-m", "parsl_dragon.server.boot", "--block-dir", launch.block_dir,
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
            status = job_status()
            if status is not None and status.state in TERMINAL_STATES and _fresh_connection(launch) is None:
                raise startup_error(launch, f"the block's job ended ({status.status_name}"
                                            f"{': ' + status.message if status.message else ''}) "
                                            "before its server came up")
        time.sleep(POLL_SECONDS)
    raise startup_error(launch, "the executor shut down while waiting")
