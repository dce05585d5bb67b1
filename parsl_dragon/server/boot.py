"""Block entry point: start one Dragon runtime with our server inside, and own its lifetime.

This is the command a provider runs for a block (see ``executor._get_launch_command``)::

    python -m parsl_dragon.server.boot --block-dir DIR --transport auto -- <server args>

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
   on PATH and a per-block token in the environment of every process it starts;
5. on SIGTERM/SIGINT/SIGHUP asks the runtime to stop, then escalates;
6. after the runtime exits, kills any process still carrying the token and
   removes this runtime's ``/dev/shm`` pools, so nothing outlives the block;
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
import ctypes
import fcntl
import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Dict, List, Optional, TextIO

logger = logging.getLogger("parsl_dragon.server.boot")

TOKEN_VAR = "PARSL_DRAGON_BLOCK_TOKEN"
NODES_VAR = "PARSL_DRAGON_NODES_PER_BLOCK"  # exported by launchers.DragonLauncher
STOP_GRACE_SECONDS = 10.0
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
    if requested != "auto":
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


def cleanup_shim(block_dir: str) -> str:
    """A private bin dir whose ``dragon-cleanup`` replaces Dragon's user-wide one (see CLEANUP_SHIM)."""
    bindir = os.path.join(block_dir, "bin")
    os.makedirs(bindir, exist_ok=True)
    path = os.path.join(bindir, "dragon-cleanup")
    with open(path, "w") as handle:
        handle.write(CLEANUP_SHIM)
    os.chmod(path, 0o755)
    return bindir


def block_environment(token: str, shim_dir: Optional[str] = None) -> Dict[str, str]:
    """The runtime's environment: our token, the venv's bin/ (and the cleanup shim) first on PATH."""
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    if shim_dir is not None:
        env["PATH"] = shim_dir + os.pathsep + env["PATH"]
    env[TOKEN_VAR] = token
    return env


def processes_with_token(token: str) -> List[int]:
    """Pids of this user's processes whose environment carries ``token`` (never others')."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for path in glob.glob("/proc/[0-9]*/environ"):
        pid = int(path.split("/")[2])
        if pid == os.getpid():
            continue
        try:
            with open(path, "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    return found


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


def pool_prefix(pid: int) -> str:
    """Shm files of a runtime's pools: Dragon names a pool D<uid last 3><creator pid last 3>...
    and its shm file gets one more "D" in front (e.g. /dev/shm/DD0194def0M)."""
    return f"/dev/shm/DD{str(os.getuid())[-3:]}{str(pid)[-3:]}"


def remove_pools(launcher_pid: int) -> List[str]:
    """Remove the shm pools of the (dead) runtime started as ``launcher_pid``.

    Skipped when another live dragon launcher of ours shares the name prefix."""
    prefix = pool_prefix(launcher_pid)
    for other in _dragon_launchers():
        if other != launcher_pid and pool_prefix(other) == prefix:
            logger.warning("Not removing %s*: live launcher %d uses the same prefix", prefix, other)
            return []
    removed = []
    for path in glob.glob(prefix + "*"):
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    if removed:
        logger.warning("Removed %d leftover shm pools: %s", len(removed), removed)
    return removed


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


class Boot:
    """Runs the runtime as a child, forwards stop signals, cleans up afterwards, and starts it
    again (up to ``attempts`` times) when it fails before the server came up."""

    def __init__(self, command: List[str], env: Dict[str, str], log_path: str, token: str,
                 connection_file: Optional[str] = None, attempts: int = START_ATTEMPTS,
                 pause: float = RETRY_PAUSE_SECONDS) -> None:
        self.command, self.env, self.log_path, self.token = command, env, log_path, token
        self.connection_file, self.attempts, self.pause = connection_file, attempts, pause
        self.child: Optional[subprocess.Popen] = None
        self.stop_requested = 0.0
        self.server_seen = False

    def _on_signal(self, signum, _frame) -> None:
        logger.info("Received %s: stopping the runtime", signal.Signals(signum).name)
        if not self.stop_requested:
            self.stop_requested = time.monotonic()
            if self.child is not None and self.child.poll() is None:
                self.child.send_signal(signal.SIGINT)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        attempt = 0
        while True:
            attempt += 1
            code = self._run_once()
            if code == 0 or self.stop_requested or self.server_seen or attempt >= self.attempts:
                return code
            logger.warning("Runtime failed (code %s) before the server came up (attempt %d of %d): "
                           "starting it again in %.0fs", code, attempt, self.attempts, self.pause)
            deadline = time.monotonic() + self.pause
            while time.monotonic() < deadline and not self.stop_requested:
                time.sleep(0.1)
            if self.stop_requested:
                return code

    def _run_once(self) -> int:
        with open(self.log_path, "ab") as log:
            self.child = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        logger.info("Started dragon (pid %d): %s", self.child.pid, " ".join(self.command))
        code = self._wait()
        kill_leftovers(self.token)
        remove_pools(self.child.pid)
        logger.info("Runtime exited with code %s", code)
        return code

    def _wait(self) -> int:
        assert self.child is not None
        while True:
            try:
                return self.child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            finally:
                self._note_server()
            if self.stop_requested and time.monotonic() - self.stop_requested > STOP_GRACE_SECONDS:
                logger.warning("Runtime did not stop within %.0fs: killing it", STOP_GRACE_SECONDS)
                self.child.kill()
                kill_leftovers(self.token)

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
    wanted, have = env.get(NODES_VAR), allocation_nodes(env)
    if wanted and wanted.isdigit() and have and int(wanted) != have:
        logger.warning("The block asked for %s nodes but the allocation has %d: the runtime uses %d",
                       wanted, have, have)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parsl_dragon.server.boot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block-dir", required=True, help="directory for this block's logs")
    parser.add_argument("--transport", default="auto", choices=["auto", "hsta", "tcp"])
    parser.add_argument("server_args", nargs=argparse.REMAINDER, help="-- then arguments for the server")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    os.makedirs(args.block_dir, exist_ok=True)
    logging.basicConfig(filename=os.path.join(args.block_dir, "boot.log"), level=logging.INFO,
                        format="%(asctime)s boot %(process)d %(levelname)s %(message)s")
    lock = take_block_lock(args.block_dir)
    if lock is None:
        message = (f"another boot of this block already runs (lock {args.block_dir}/boot.lock): the launcher "
                   "started more than one copy; this one exits (use parsl_dragon.launchers.DragonLauncher)")
        logger.error("%s", message)
        print(f"parsl-dragon boot: {message}", file=sys.stderr)
        return DUPLICATE_EXIT
    server_args = [a for a in args.server_args if a != "--"]
    server_args += ["--launcher-pid", str(os.getpid())]
    token = uuid.uuid4().hex
    env = block_environment(token, cleanup_shim(args.block_dir))
    check_block_size(env)
    logger.info("Block on %s: allocation of %d node(s) (0: none), launch mode %s", socket.gethostname(),
                allocation_nodes(env), " ".join(launch_mode_args(env)))
    try:
        command = dragon_command(choose_transport(args.transport), env, server_args)
    except FileNotFoundError as exc:
        logger.error("%s", exc)
        print(f"parsl-dragon boot: {exc}", file=sys.stderr)
        return 127
    return Boot(command, env, os.path.join(args.block_dir, "dragon.log"), token,
                connection_file=server_flag(server_args, "--connection-file")).run()


if __name__ == "__main__":
    sys.exit(main())
