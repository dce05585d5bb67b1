"""Block entry point: start one Dragon runtime with our server inside, and own its lifetime.

This is the command a provider runs for a block (see ``executor._get_launch_command``)::

    python -m parsl_dragon.server.boot --block-dir DIR --transport auto [--driver-pid PID] -- <server args>

It runs *outside* Dragon and:

1. chooses the transport (``auto``: HSTA only when its agent and libfabric load,
   else TCP, and says so in the log);
2. chooses the launch mode: single-node (``dragon -s``) outside an allocation or
   in a one-node allocation, Dragon's WLM mode (``-w slurm`` / ``-w pbs+pals``)
   in a multi-node one;
3. passes the server's ``--host-address`` (``auto`` or an interface name) through:
   the server resolves it itself (``server/address.py``), because Dragon may start its
   head process on another node of the allocation than the one boot runs on;
4. runs ``dragon ... python -m parsl_dragon.server.main`` with the venv's ``bin/``
   on PATH and a per-block token in the environment of every process it starts; the
   block dir and its ``bin/`` (which goes first on PATH) must be ours and 0700;
5. on SIGTERM/SIGINT/SIGHUP, or when the driver named by ``--driver-pid`` is gone
   (a block on the driver's own host follows its driver), asks the runtime to stop
   (SIGTERM to our server once it is up, SIGINT to ``dragon`` before), then kills it
   after a grace period; the launcher runs in its own process group, so a signal to
   the job's group (Parsl's ``LocalProvider.cancel``) reaches boot, not the runtime;
6. after the runtime exits, kills any process still carrying the token and
   removes this runtime's ``/dev/shm`` pools (the names its processes mapped, plus
   Dragon's names for its launcher's own pools; never a pool another process uses),
   so nothing outlives the block;
7. if the runtime failed before our server announced itself (its connection file
   never appeared) and no stop was asked for, starts it once more: Dragon's
   multi-node start-up over TCP fails now and then under load ("Expected TAUp
   during startup", "timed out waiting for LS bringup"), and a second start usually
   works. Both attempts are in ``dragon.log``; the driver's start-up timeout bounds both.

Only one boot runs per block: a second copy (a launcher that starts one per node)
finds the block's lock taken and exits with ``DUPLICATE_EXIT``.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import glob
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from typing import Dict, Iterable, List, Optional, Set, TextIO, Tuple

from parsl_dragon.vocabulary import AUTO_TRANSPORT, DEFAULT_TRANSPORT, ENV_BLOCK_TOKEN, ENV_NODES_PER_BLOCK, TRANSPORTS

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0
STARTUP_STOP_GRACE_SECONDS = 2.0  # a launcher stopped before the server is up never ends by itself
START_ATTEMPTS = 2         # see 7. above
RETRY_PAUSE_SECONDS = 5.0  # lets the first attempt's processes on the other nodes go
DUPLICATE_EXIT = 3


def hsta_available() -> bool:
    """True when Dragon's HSTA agent exists and libfabric (with fi_freeinfo) loads."""
    if shutil.which("dragon-hsta") is None:
        return False
    try:
        return hasattr(ctypes.CDLL("libfabric.so.1"), "fi_freeinfo")
    except OSError:
        return False


def choose_transport(requested: str) -> str:
    """Resolve ``auto`` to ``hsta`` or ``tcp``; explicit choices pass through."""
    if requested != AUTO_TRANSPORT:
        return requested
    if hsta_available():
        logger.info("transport auto: HSTA is available, using hsta")
        return "hsta"
    logger.warning("transport auto: HSTA unavailable (no dragon-hsta agent or libfabric); falling back to tcp")
    return "tcp"


def allocation_nodes(env: Dict[str, str]) -> int:
    """Number of nodes of the allocation we run in (0 outside any allocation)."""
    if env.get("SLURM_JOB_ID"):
        return int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    nodefile = env.get("PBS_NODEFILE")
    if env.get("PBS_JOBID") and nodefile and os.path.exists(nodefile):
        with open(nodefile) as handle:
            return len({line.strip() for line in handle if line.strip()}) or 1
    return 0


def launch_mode_args(env: Dict[str, str]) -> List[str]:
    """``-s`` for one node or no allocation (Dragon refuses to start when it sees srun
    but no allocation); ``-w slurm`` / ``-w pbs+pals`` for a multi-node allocation."""
    nodes = allocation_nodes(env)
    if nodes <= 1:
        return ["-s"]
    return ["-w", "slurm"] if env.get("SLURM_JOB_ID") else ["-w", "pbs+pals"]


def dragon_command(transport: str, env: Dict[str, str], server_args: List[str]) -> List[str]:
    dragon = shutil.which("dragon", path=env.get("PATH"))
    if dragon is None:
        raise FileNotFoundError("the 'dragon' launcher is not on PATH; install dragonhpc in this environment")
    return [dragon, *launch_mode_args(env), "-t", transport,
            sys.executable, "-m", "parsl_dragon.server.main", *server_args]


CLEANUP_SHIM = """#!/bin/sh
# Written by parsl-dragon's block boot. Dragon's launcher runs `dragon-cleanup` when it is
# stopped by a signal or exits abnormally; the real one kills every Dragon process of this user
# on the node and deletes all of the user's /dev/shm files -- other blocks, other workflows.
# The block's boot process cleans up instead, scoped to processes carrying this block's token
# and to this runtime's own shm pools.
echo "parsl-dragon: skipped user-wide dragon-cleanup $*; the block cleans up its own processes" >&2
exit 0
"""


class UnsafeBlockDir(RuntimeError):
    """The block dir or its ``bin/`` is not a directory of ours that only we can write."""


def private_directory(path: str) -> None:
    """Make ``path`` 0700 (creating it if missing); refuse (:class:`UnsafeBlockDir`) a symlink,
    a non-directory, one owned by another user, or one group/others can write (what they may
    have put there, e.g. a ``bin/dragon``, would run as us)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeBlockDir(f"refusing {path}: not a directory (a symbolic link or a file?): {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafeBlockDir(f"refusing {path}: it belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})")
        if st.st_mode & 0o022:
            raise UnsafeBlockDir(f"refusing {path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others "
                                 "write it; it must be 0700")
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def write_file_nofollow(directory: str, name: str, text: str, mode: int) -> str:
    """Write ``directory/name`` without following a symlink planted in its place: a new temporary
    file (O_EXCL|O_NOFOLLOW) renamed over it, both relative to one descriptor of the directory."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        temp = f".{name}.{uuid.uuid4().hex}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            os.fchmod(handle.fileno(), mode)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    return os.path.join(directory, name)


def cleanup_shim(block_dir: str) -> str:
    """A private bin dir whose ``dragon-cleanup`` replaces Dragon's user-wide one (see CLEANUP_SHIM)."""
    bindir = os.path.join(block_dir, "bin")
    private_directory(bindir)
    write_file_nofollow(bindir, "dragon-cleanup", CLEANUP_SHIM, 0o755)
    return bindir


def block_environment(token: str, shim_dir: Optional[str] = None) -> Dict[str, str]:
    """The runtime's environment: our token, the venv's bin/ (and the cleanup shim) first on PATH."""
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    if shim_dir is not None:
        env["PATH"] = shim_dir + os.pathsep + env["PATH"]
    env[ENV_BLOCK_TOKEN] = token
    return env


def carries_token(pid: int, token: str) -> bool:
    """Whether process ``pid`` has ``token`` in its environment (False if gone or not ours)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return f"{ENV_BLOCK_TOKEN}={token}".encode() in handle.read().split(b"\0")
    except OSError:
        return False


def processes_with_token(token: str) -> List[int]:
    """Pids of this user's processes whose environment carries ``token`` (never others')."""
    pids = (int(path.split("/")[2]) for path in glob.glob("/proc/[0-9]*"))
    return [pid for pid in pids if pid != os.getpid() and carries_token(pid, token)]


def kill_leftovers(token: str) -> List[int]:
    pids = processes_with_token(token)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if pids:
        logger.warning("Killed %d leftover processes of this block: %s", len(pids), pids)
    return pids


# ---------------------------------------------------------------- the driver

def process_stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state, start time in clock ticks since boot) of ``pid`` from /proc/PID/stat, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat_line = handle.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat_line[stat_line.rfind(")") + 2:].split()  # the command name may hold spaces and ')'
    return fields[0], int(fields[19])


class DriverWatch:
    """Tells when the driver process (pid + start time, read when boot starts) is gone.

    A pidfd (where the kernel has one) names exactly that process; otherwise /proc is polled,
    and a pid now carried by a process with another start time is a reused pid. A process that
    started after boot cannot be the driver that launched it: the driver was already gone."""

    def __init__(self, pid: int, boot_started: Optional[int] = None) -> None:
        """``boot_started``: start time (clock ticks) of the boot process; by default ours."""
        self.pid = pid
        self.pidfd = _pidfd(pid)
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
        if now[0] in ("Z", "X"):
            return f"driver process {self.pid} exited (zombie)"
        return None

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _pidfd(pid: int) -> Optional[int]:
    """A pidfd for ``pid``, or None where the kernel or Python has none (then /proc is polled)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------- shm pools

SHM_DIR = "/dev/shm"
# What follows the "D<uid3|user3><pid3>" stem in the shm files of the pools a Dragon launcher
# creates itself (dragon.infrastructure.facts.runtime_pool_name, dlogging's logging pool):
# "inf" / "def" / "log_", a retry digit, then M (manifest) or D (data).
_RUNTIME_POOL_TAIL = re.compile(r"(inf|def|log_)[0-9][MD]")
_DRAGON_SHM_NAME = re.compile(r"D[D0-9]")  # any Dragon pool's shm file ("D" + a pool name "D...")


def pool_prefix(pid: int) -> str:
    """Shm files of a runtime's pools: Dragon names a pool D<uid last 3><creator pid last 3>...
    and its shm file gets one more "D" in front (e.g. /dev/shm/DD0194def0M). Only a prefix:
    ``DD042`` also begins ``DD0423...``; :func:`runtime_pool_files` matches whole names."""
    return f"{SHM_DIR}/DD{str(os.getuid())[-3:]}{str(pid)[-3:]}"


def runtime_pool_files(launcher_pid: int) -> List[str]:
    """Existing shm files named exactly as the pools Dragon's launcher ``launcher_pid`` creates
    (a pid with the same last 3 digits makes the same names: see :func:`remove_pools`)."""
    directory, stem = os.path.split(pool_prefix(launcher_pid))
    user = os.environ.get("USER")  # dlogging names the logging pool after $USER, else the uid
    stems = {stem} | ({"DD" + user[-3:] + str(launcher_pid)[-3:]} if user else set())
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names
                  if any(n.startswith(s) and _RUNTIME_POOL_TAIL.fullmatch(n[len(s):]) for s in stems))


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


def shm_files_of(pid: int) -> Set[str]:
    """The /dev/shm files process ``pid`` maps or holds open."""
    return {path for path in files_of(pid) if path.startswith(SHM_DIR + "/")}


def files_in_use(paths: Iterable[str], exclude: Iterable[int] = ()) -> Set[str]:
    """Those of ``paths`` that a live process, except ``exclude`` (and us), maps or holds open."""
    wanted, skip, used = set(paths), set(exclude) | {os.getpid()}, set()
    for path in glob.glob("/proc/[0-9]*") if wanted else ():
        pid = int(path.rsplit("/", 1)[1])
        if pid not in skip:
            used |= files_of(pid) & wanted
    return used


def remove_pools(launcher_pid: int, known: Iterable[str] = (), exclude: Iterable[int] = (),
                 created_after: Optional[float] = None) -> List[str]:
    """Remove the shm pools of the (dead) runtime started as ``launcher_pid``: ``known`` (names its
    processes were seen using) plus the files named as that launcher's own pools.

    Never one that a live process outside ``exclude`` (the block's dying processes) uses; the
    names derived from the pid only when no live launcher shares its last 3 digits, and only
    those created at or after ``created_after`` (the runtime's start, when known)."""
    candidates = set(known) | set(_named_pools(launcher_pid, created_after))
    in_use = files_in_use(candidates, exclude)
    removed = []
    for path in sorted(candidates - in_use):
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    if in_use:
        logger.warning("Kept shm files other live processes use: %s", sorted(in_use))
    if removed:
        logger.warning("Removed %d leftover shm pools: %s", len(removed), removed)
    return removed


def _named_pools(launcher_pid: int, created_after: Optional[float]) -> List[str]:
    """:func:`runtime_pool_files` of the launcher, unless a live launcher makes the same names."""
    for other in _dragon_launchers():
        if other != launcher_pid and str(other)[-3:] == str(launcher_pid)[-3:]:
            logger.warning("Not removing pools named after launcher %d: live launcher %d makes the same names",
                           launcher_pid, other)
            return []
    return [p for p in runtime_pool_files(launcher_pid) if created_after is None or _created(p) >= created_after]


def _created(path: str) -> float:
    try:
        return os.stat(path).st_ctime
    except OSError:
        return 0.0


def _dragon_launchers() -> List[int]:
    pids = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if any(os.path.basename(a) == b"dragon" for a in argv[:2]):
            pids.append(int(path.split("/")[2]))
    return pids


# ---------------------------------------------------------------- the runtime

class Boot:
    """Runs the runtime as a child, forwards stop signals (and the driver's end), cleans up
    afterwards, and starts it again (up to ``attempts`` times) when it fails before the server
    came up."""

    def __init__(self, command: List[str], env: Dict[str, str], log_path: str, token: str,
                 connection_file: Optional[str] = None, attempts: int = START_ATTEMPTS,
                 pause: float = RETRY_PAUSE_SECONDS, driver: Optional[DriverWatch] = None) -> None:
        self.command, self.env, self.log_path, self.token = command, env, log_path, token
        self.connection_file, self.attempts, self.pause = connection_file, attempts, pause
        self.driver = driver
        self.child: Optional[subprocess.Popen] = None
        self.signalled = 0  # the first stop signal received, acted on by the main loop
        self.stop_requested = 0.0
        self.grace = STOP_GRACE_SECONDS
        self.server_seen = False
        self.pools: Set[str] = set()

    def _on_signal(self, signum, _frame) -> None:
        """Only note the signal (no logging or I/O inside a handler): the main loop acts on it."""
        self.signalled = self.signalled or signum

    def _check_requests(self) -> None:
        """Start stopping the runtime once a stop signal came or the driver is gone."""
        if self.stop_requested:
            return
        if self.signalled:
            self._request_stop(f"Received {signal.Signals(self.signalled).name}")
            return
        why = self.driver.gone() if self.driver is not None else None
        if why:
            logger.warning("The block follows its driver, and %s", why)
            self._request_stop("Driver gone")

    def _request_stop(self, why: str) -> None:
        """Ask the runtime to stop; ``_wait`` kills it if it has not stopped after the grace period.

        With our server up, the server is asked (SIGTERM: it stops as on a Shutdown, and the
        runtime with it): Dragon's launcher, waiting in a queue read that never checks for
        signals, does not act on SIGINT. Before the server is up the launcher gets SIGINT and a
        short grace (see :meth:`_ask_runtime`). A server already gone means the runtime is
        ending by itself: it is left to finish within the grace period."""
        if self.stop_requested:
            return
        logger.info("%s: stopping the runtime", why)
        self.stop_requested = time.monotonic()
        if self.child is not None and self.child.poll() is None:
            self._ask_runtime()

    def _ask_runtime(self) -> None:
        assert self.child is not None
        server = self._server_pid()
        if server is not None:
            logger.info("Asking the server (pid %d) to stop", server)
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGTERM)
        elif not self.server_seen:
            # Interrupted while starting, the launcher raises KeyboardInterrupt (or dies at once),
            # then waits for ever on its non-daemon logging thread: nothing to wait for.
            self.grace = STARTUP_STOP_GRACE_SECONDS
            self.child.send_signal(signal.SIGINT)
        else:
            logger.info("The server is gone: waiting for the runtime to end")

    def _server_pid(self) -> Optional[int]:
        """The pid in our connection file, if that process carries this block's token."""
        try:
            with open(self.connection_file or "") as handle:
                pid = json.load(handle).get("pid")
        except (OSError, ValueError, AttributeError):
            return None
        return pid if isinstance(pid, int) and pid > 0 and carries_token(pid, self.token) else None

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        attempt, code = 0, 0
        while True:
            self._check_requests()
            if self.stop_requested:
                logger.info("Stop asked for before attempt %d: not starting the runtime", attempt + 1)
                return code
            attempt += 1
            code = self._run_once()
            self._check_requests()
            if code == 0 or self.stop_requested or self.server_seen or attempt >= self.attempts:
                return code
            logger.warning("Runtime failed (code %s) before the server came up (attempt %d of %d): "
                           "starting it again in %.0fs", code, attempt, self.attempts, self.pause)
            self._pause()

    def _pause(self) -> None:
        deadline = time.monotonic() + self.pause
        while time.monotonic() < deadline and not self.stop_requested:
            time.sleep(0.1)
            self._check_requests()

    def _run_once(self) -> int:
        started = time.time()
        with open(self.log_path, "ab") as log:
            self.child = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, process_group=0)
        logger.info("Started dragon (pid %d): %s", self.child.pid, " ".join(self.command))
        code = self._wait()
        self._clean_up(started)
        logger.info("Runtime exited with code %s", code)
        return code

    def _clean_up(self, started: float) -> None:
        """Kill what still carries the token, then remove the pools this runtime made."""
        assert self.child is not None
        killed = kill_leftovers(self.token)
        remove_pools(self.child.pid, known=self.pools, exclude=killed + [self.child.pid],
                     created_after=started - 1.0)

    def _wait(self) -> int:
        assert self.child is not None
        while True:
            self._learn_pools()
            try:
                return self.child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            finally:
                self._note_server()
            self._check_requests()
            if self.stop_requested and time.monotonic() - self.stop_requested > self.grace:
                logger.warning("Runtime did not stop within %.0fs: killing it", self.grace)
                self.child.kill()
                kill_leftovers(self.token)

    def _learn_pools(self) -> None:
        """Note the Dragon pools the block's processes use: exactly the shm files to remove later
        (other /dev/shm files a task may use are not the runtime's)."""
        for pid in processes_with_token(self.token):
            new = {p for p in shm_files_of(pid) if _DRAGON_SHM_NAME.match(os.path.basename(p))} - self.pools
            if new:
                logger.info("Runtime uses shm %s", sorted(new))
                self.pools |= new

    def _note_server(self) -> None:
        if not self.server_seen and self.connection_file and os.path.exists(self.connection_file):
            self.server_seen = True


def server_flag(server_args: List[str], flag: str) -> Optional[str]:
    """The value of ``flag`` among the server's arguments, or None."""
    if flag in server_args[:-1]:
        return server_args[server_args.index(flag) + 1]
    return None


def take_block_lock(block_dir: str) -> Optional[TextIO]:
    """Hold ``block_dir/boot.lock`` for this process's life; None if another boot holds it."""
    handle = open(os.path.join(block_dir, "boot.lock"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def check_block_size(env: Dict[str, str]) -> None:
    """Warn when the block asked for more nodes than the allocation we see has."""
    wanted, have = env.get(ENV_NODES_PER_BLOCK), allocation_nodes(env)
    if wanted and wanted.isdigit() and have and int(wanted) != have:
        logger.warning("The block asked for %s nodes but the allocation has %d: the runtime uses %d",
                       wanted, have, have)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parsl_dragon.server.boot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block-dir", required=True, help="directory for this block's logs")
    parser.add_argument("--transport", default=DEFAULT_TRANSPORT, choices=TRANSPORTS)
    parser.add_argument("--driver-pid", type=int, default=None,
                        help="stop the runtime when this process (the driver, on this host) is gone")
    parser.add_argument("server_args", nargs=argparse.REMAINDER, help="-- then arguments for the server")
    return parser


def prepare_block_dir(block_dir: str) -> None:
    """The block dir (parents made as needed) must be ours and 0700: its bin/ goes first on PATH."""
    parent = os.path.dirname(os.path.abspath(block_dir))
    os.makedirs(parent, exist_ok=True)
    private_directory(block_dir)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    driver = DriverWatch(args.driver_pid) if args.driver_pid is not None else None  # before anything slow
    try:
        prepare_block_dir(args.block_dir)
    except (UnsafeBlockDir, OSError) as exc:
        print(f"parsl-dragon boot: {exc}", file=sys.stderr)  # no log file: the directory is not ours
        return 2
    logging.basicConfig(filename=os.path.join(args.block_dir, "boot.log"), level=logging.INFO,
                        format="%(asctime)s boot %(process)d %(levelname)s %(message)s")
    lock = take_block_lock(args.block_dir)
    if lock is None:
        message = (f"another boot of this block already runs (lock {args.block_dir}/boot.lock): the launcher "
                   "started more than one copy; this one exits (use parsl_dragon.driver.launchers.DragonLauncher)")
        logger.error("%s", message)
        print(f"parsl-dragon boot: {message}", file=sys.stderr)
        return DUPLICATE_EXIT
    server_args = [a for a in args.server_args if a != "--"]
    server_args += ["--launcher-pid", str(os.getpid())]
    token = uuid.uuid4().hex
    try:
        env = block_environment(token, cleanup_shim(args.block_dir))
    except (UnsafeBlockDir, OSError) as exc:
        logger.error("%s", exc)
        print(f"parsl-dragon boot: {exc}", file=sys.stderr)
        return 2
    check_block_size(env)
    logger.info("Block on %s: allocation of %d node(s) (0: none), launch mode %s%s", socket.gethostname(),
                allocation_nodes(env), " ".join(launch_mode_args(env)),
                f", following driver pid {args.driver_pid}" if driver else "")
    try:
        command = dragon_command(choose_transport(args.transport), env, server_args)
    except FileNotFoundError as exc:
        logger.error("%s", exc)
        print(f"parsl-dragon boot: {exc}", file=sys.stderr)
        return 127
    return Boot(command, env, os.path.join(args.block_dir, "dragon.log"), token,
                connection_file=server_flag(server_args, "--connection-file"), driver=driver).run()


if __name__ == "__main__":
    sys.exit(main())
