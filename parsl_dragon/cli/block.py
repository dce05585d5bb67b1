"""What a connection file lets ``parsl-dragon`` prove about its block's processes on this host.

A process is the block's when its environment carries the file's ``block_token``
(:func:`~parsl_dragon.host.processes.carries_token`); the boot process, which makes the token for
its children and does not carry it, only when it is the parent of one that does. A file
without a token (an older version) proves nothing: no process of it is ever signalled.
"""
from __future__ import annotations

import os
import re
import time
from typing import Callable, List, Optional

from parsl_dragon.host.processes import carries_token, command_line, is_running, parent_pid, processes_with_token
from parsl_dragon.host.shm import is_dragon_launcher
from parsl_dragon.vocabulary import BOOT_MODULE
from parsl_dragon.wire.connection import ConnectionInfo

_BOOT_LOG_LAUNCH = re.compile(r"Started dragon \(pid (\d+)\)")


class Block:
    """The processes of the block ``info`` names, as far as they can be proven here."""

    def __init__(self, info: ConnectionInfo) -> None:
        self.info = info
        self.token = info.block_token

    def token_pids(self) -> List[int]:
        """The processes carrying the block token, sorted."""
        return sorted(processes_with_token(self.token)) if self.token else []

    def owns(self, pid: int) -> bool:
        """Carries the token, or is the boot process and the parent of a process that does."""
        if carries_token(pid, self.token):
            return True
        return pid == self.info.launcher_pid and any(parent_pid(c) == pid for c in self.token_pids())

    def alive(self, pid: int) -> bool:
        """``pid`` is (still) this block's process; without a token, merely that it runs."""
        return carries_token(pid, self.token) if self.token else is_running(pid)

    def server_running(self) -> bool:
        return self.alive(self.info.pid)

    def boot_running(self) -> bool:
        """The boot process still runs (its command line names the boot module and this block's dir)."""
        pid = self.info.launcher_pid
        argv = command_line(pid) if pid is not None and is_running(pid) else []
        return BOOT_MODULE.encode() in argv and os.path.dirname(self.info.log_path).encode() in argv

    def all_gone(self) -> bool:
        return not (self.server_running() or self.boot_running() or self.token_pids())

    def runtime_launcher(self) -> Optional[int]:
        """The ``dragon`` launcher (creator of the shm pools): the boot's child among the token
        processes, else the token process running ``dragon``, else what boot.log recorded."""
        pids = self.token_pids()
        for pid in pids:
            if self.info.launcher_pid is not None and parent_pid(pid) == self.info.launcher_pid:
                return pid
        for pid in pids:
            if is_dragon_launcher(pid):
                return pid
        return launcher_from_boot_log(os.path.join(os.path.dirname(self.info.log_path), "boot.log"))


def launcher_from_boot_log(path: str) -> Optional[int]:
    """The last ``dragon`` launcher boot.log says it started, or None."""
    try:
        with open(path, errors="replace") as handle:
            found = _BOOT_LOG_LAUNCH.findall(handle.read())
    except OSError:
        return None
    return int(found[-1]) if found else None


def wait_until(done: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll ``done`` every ``interval`` seconds until it holds (True) or ``timeout`` passed (False)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True
