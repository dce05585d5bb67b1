"""Proofs about processes on this host, from /proc and pidfds: which ones belong to a block, and
signalling only those.

Used by a block's boot process (cleaning up after its runtime, following its driver) and by
``parsl-dragon teardown``. Stdlib only: no zmq, no Dragon, no Parsl. What each proof guarantees:

* **Block token** (:func:`carries_token`, :func:`processes_with_token`): boot puts a fresh
  random token in the environment of every process it starts (``ENV_BLOCK_TOKEN``), read back
  from ``/proc/PID/environ``. A process carrying the token is this block's, whatever its pid
  or name; a recycled pid, another user's process (its environ is unreadable to us), a zombie
  (its environ is empty) or another block's process never carries it.
* **pid + start time** (:func:`process_stat`): a pid alone may be reused by a new process; the
  start time (clock ticks since boot, field 22 of ``/proc/PID/stat``) tells a reused pid apart.
* **pidfd** (:class:`ProcessHandle`, :class:`DriverWatch`): a descriptor naming exactly one
  process, taken *before* a proof holds; a signal sent through it never reaches a process that
  got the pid later. Without pidfds (Linux < 5.3) the proof is repeated right before ``kill``.
* **Files in use** (:func:`files_of`): what a process maps or holds open, so a file another
  live process uses is never removed (see :mod:`parsl_dragon.host.shm`).
"""
from __future__ import annotations

import glob
import logging
import os
import select
import signal
from typing import Callable, List, Optional, Set, Tuple

from parsl_dragon.vocabulary import ENV_BLOCK_TOKEN

logger = logging.getLogger(__name__)

_GONE_STATES = ("Z", "X")  # zombie, dead: the process has exited


# ---------------------------------------------------------------- /proc facts

def _read(pid: int, name: str) -> bytes:
    """The contents of ``/proc/PID/name``; empty if the process is gone or not ours."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def all_pids() -> List[int]:
    """Every pid in /proc now (ours included)."""
    return [int(path.rsplit("/", 1)[1]) for path in glob.glob("/proc/[0-9]*")]


def _stat_fields(pid: int) -> List[str]:
    """Fields 3 on of ``/proc/PID/stat`` (state first); [] if gone."""
    text = _read(pid, "stat").decode(errors="replace")
    return text[text.rfind(")") + 2:].split() if text else []  # the command name may hold spaces and ')'


def process_stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state, start time in clock ticks since boot) of ``pid``, or None if gone."""
    fields = _stat_fields(pid)
    return (fields[0], int(fields[19])) if fields else None


def cpu_seconds(pid: int) -> Optional[float]:
    """CPU seconds (user + system) ``pid`` has used so far, or None if gone."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if len(fields) > 12 else None


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    state = process_stat(pid)
    return state is not None and state[0] not in _GONE_STATES


def parent_pid(pid: int) -> Optional[int]:
    """The parent of ``pid``, or None if gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else None


def command_line(pid: int) -> List[bytes]:
    """The argv of ``pid`` (empty if gone, [b""] for a zombie)."""
    return _read(pid, "cmdline").split(b"\0")


def files_of(pid: int) -> Set[str]:
    """The files process ``pid`` maps or holds open (empty if it is gone)."""
    found = set()
    try:
        with open(f"/proc/{pid}/maps") as handle:
            for line in handle:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    found.add(parts[5].rstrip("\n").removesuffix(" (deleted)"))
        for fd in os.listdir(f"/proc/{pid}/fd"):
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}").removesuffix(" (deleted)"))
    except OSError:
        pass
    return found


# ---------------------------------------------------------------- the block token

def carries_token(pid: int, token: Optional[str]) -> bool:
    """Whether ``pid``'s environment holds the block token (never without a token, for a zombie
    or for another user's process)."""
    return bool(token) and f"{ENV_BLOCK_TOKEN}={token}".encode() in _read(pid, "environ").split(b"\0")


def processes_with_token(token: str) -> List[int]:
    """Pids of this user's processes whose environment carries ``token`` (never others', never ours)."""
    return [pid for pid in all_pids() if pid != os.getpid() and carries_token(pid, token)]


def kill_leftovers(token: str) -> List[int]:
    """SIGKILL every process carrying ``token``; their pids."""
    pids = processes_with_token(token)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if pids:
        logger.warning("Killed %d leftover processes of this block: %s", len(pids), pids)
    return pids


# ---------------------------------------------------------------- pidfds

def open_pidfd(pid: int) -> Optional[int]:
    """A pidfd naming process ``pid``, None where the kernel or Python has none.

    Raises
    ------
    ProcessLookupError
        No process ``pid`` exists.
    """
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except (AttributeError, OSError):
        return None


class ProcessHandle:
    """A process proven to be the block's; signalled through a pidfd, so a recycled pid is never hit."""

    def __init__(self, pid: int, fd: Optional[int], proof: Callable[[int], bool]) -> None:
        self.pid, self.fd, self.proof = pid, fd, proof

    @classmethod
    def open(cls, pid: int, proof: Callable[[int], bool]) -> Optional["ProcessHandle"]:
        """A handle if ``proof(pid)`` holds, else None (the pidfd is taken first, then proven)."""
        try:
            fd = open_pidfd(pid)  # None: no pidfds; prove again right before each signal instead
        except ProcessLookupError:
            return None
        if not proof(pid):
            if fd is not None:
                os.close(fd)
            return None
        return cls(pid, fd, proof)

    def send(self, sig: signal.Signals) -> bool:
        """Signal the process; False if it is gone (or, without a pidfd, no longer proven)."""
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, sig)
            elif self.proof(self.pid):
                os.kill(self.pid, sig)
            else:
                return False
            return True
        except ProcessLookupError:
            return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class DriverWatch:
    """Tells when the driver process (pid + start time, read when boot starts) is gone.

    A pidfd (where the kernel has one) names exactly that process; otherwise /proc is polled,
    and a pid now carried by a process with another start time is a reused pid. A process that
    started after boot cannot be the driver that launched it: the driver was already gone."""

    def __init__(self, pid: int, boot_started: Optional[int] = None) -> None:
        """``boot_started``: start time (clock ticks) of the boot process; by default ours."""
        self.pid = pid
        try:
            self.pidfd = open_pidfd(pid)
        except ProcessLookupError:
            self.pidfd = None
        first = process_stat(pid)
        self.started = first[1] if first else None
        if boot_started is None:
            own = process_stat(os.getpid())
            boot_started = own[1] if own else None
        self.at_start = self._why_gone(first) or (
            f"pid {pid} started after this boot process: a new process reused the driver's pid"
            if first and boot_started is not None and first[1] > boot_started else None)

    def gone(self) -> Optional[str]:
        """Why the driver is gone, or None while it runs."""
        if self.at_start:
            return self.at_start
        if self.pidfd is not None:
            ready, _, _ = select.select([self.pidfd], [], [], 0)
            return f"driver process {self.pid} exited" if ready else None
        return self._why_gone(process_stat(self.pid))

    def _why_gone(self, now: Optional[Tuple[str, int]]) -> Optional[str]:
        if now is None:
            return f"driver process {self.pid} does not exist"
        if self.started is not None and now[1] != self.started:
            return f"driver pid {self.pid} now belongs to another process (start time changed)"
        if now[0] in _GONE_STATES:
            return f"driver process {self.pid} exited (zombie)"
        return None

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
