"""A block's start-up timeline: when each step of bringing up its server happened, measured.

The processes of a block note their milestones (wall-clock seconds) as they pass them: the
driver in memory, the boot process and the server in ``<block dir>/startup.jsonl`` (one JSON
object per line, appended). :func:`timeline` merges both into a :class:`Timeline`, which
``DragonExecutor.startup_timeline()`` returns and ``benchmarks/throughput.py`` prints::

    milestone          noted by   when
    BLOCK_SUBMITTED    driver     the executor asks the provider for the block's job
    JOB_LAUNCHED       driver     the provider accepted the job
    BOOT_STARTED       boot       the boot process began (its start time in /proc)
    RUNTIME_LAUNCHED   boot       boot started ``dragon``
    SERVER_STARTED     server     Dragon started the server, its head process (start time in /proc)
    SERVER_IMPORTED    server     the server's modules are imported (``main()`` runs)
    SERVER_READY       server     the connection file is written (its ``created`` field)
    CONNECTION_SEEN    driver     the executor's watcher read the connection file
    WELCOME            driver     the handshake is done: the server is usable
    WORKER_READY       server     the first worker said ``WorkerReady``
    FIRST_RESULT       driver     the first result from this block's server arrived

Clocks: wall clock of each host; on a multi-node block the server's node may differ from
the driver's by its clock skew. Noting never fails the block: a file that cannot be written
or read only leaves milestones out.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

STARTUP_FILE = "startup.jsonl"

BLOCK_SUBMITTED = "block_submitted"
JOB_LAUNCHED = "job_launched"
BOOT_STARTED = "boot_started"
RUNTIME_LAUNCHED = "runtime_launched"
SERVER_STARTED = "server_started"
SERVER_IMPORTED = "server_imported"
SERVER_READY = "server_ready"
CONNECTION_SEEN = "connection_seen"
WELCOME = "welcome"
WORKER_READY = "worker_ready"
FIRST_RESULT = "first_result"
MILESTONES: Tuple[str, ...] = (BLOCK_SUBMITTED, JOB_LAUNCHED, BOOT_STARTED, RUNTIME_LAUNCHED, SERVER_STARTED,
                               SERVER_IMPORTED, SERVER_READY, CONNECTION_SEEN, WELCOME, WORKER_READY, FIRST_RESULT)


def process_started(pid: Optional[int] = None) -> Optional[float]:
    """When process ``pid`` (default: this one) began, in wall-clock seconds (10 ms resolution):
    its start time in ``/proc`` (clock ticks since boot) against the uptime now; None where
    ``/proc`` cannot say."""
    try:
        with open(f"/proc/{pid or os.getpid()}/stat") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as handle:
            uptime, now = float(handle.read().split()[0]), time.time()
    except (OSError, ValueError, IndexError):
        return None
    return now - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def note(block_dir: str, milestone: str, at: Optional[float] = None) -> None:
    """Append ``milestone`` (at ``at``, default now) to the block's start-up file; never raises."""
    line = json.dumps({"milestone": milestone, "at": time.time() if at is None else at, "pid": os.getpid()})
    try:
        fd = os.open(os.path.join(block_dir, STARTUP_FILE),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        os.write(fd, (line + "\n").encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def note_process_start(block_dir: str, milestone: str) -> None:
    """Note ``milestone`` at the time this process began (left out where /proc cannot say)."""
    started = process_started()
    if started is not None:
        note(block_dir, milestone, at=started)


def read_notes(block_dir: str) -> Dict[str, float]:
    """The milestones in the block's start-up file, the first time each was noted."""
    found: Dict[str, float] = {}
    try:
        with open(os.path.join(block_dir, STARTUP_FILE), errors="replace") as handle:
            lines = handle.read(1 << 20).splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            entry = json.loads(line)
            name, at = entry["milestone"], float(entry["at"])
        except (ValueError, KeyError, TypeError):
            continue
        if name in MILESTONES and name not in found:
            found[name] = at
    return found


@dataclass(frozen=True)
class Timeline:
    """The milestones of one block's start-up (wall-clock seconds), in :data:`MILESTONES` order."""

    block_id: str
    at: Mapping[str, float]

    def since(self, origin: float) -> List[Tuple[str, float]]:
        """(milestone, seconds after ``origin``) for every milestone noted, in order."""
        return [(name, self.at[name] - origin) for name in MILESTONES if name in self.at]

    def span(self, first: str, last: str) -> Optional[float]:
        """Seconds from milestone ``first`` to ``last``; None unless both were noted."""
        if first in self.at and last in self.at:
            return self.at[last] - self.at[first]
        return None


def timeline(block_id: str, block_dir: str, driver_notes: Mapping[str, float]) -> Timeline:
    """The block's timeline: what its processes noted in ``block_dir``, and the driver's notes."""
    return Timeline(block_id, {**read_notes(block_dir), **driver_notes})
