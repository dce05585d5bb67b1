"""Block entry point: start one Dragon runtime with our server inside, and own its lifetime.

This is the command a provider runs for a block (see ``executor._get_launch_command``)::

    python -m parsl_dragon.server.boot --block-dir DIR --transport auto -- <server args>

It runs *outside* Dragon and:

1. chooses the transport (``auto``: HSTA only when its agent and libfabric load,
   else TCP, and says so in the log);
2. chooses the launch mode: single-node (``dragon -s``) outside an allocation or
   in a one-node allocation, Dragon's WLM mode (``-w slurm`` / ``-w pbs+pals``)
   in a multi-node one;
3. runs ``dragon ... python -m parsl_dragon.server.main`` with the venv's ``bin/``
   on PATH and a per-block token in the environment of every process it starts;
4. on SIGTERM/SIGINT/SIGHUP asks the runtime to stop, then escalates;
5. after the runtime exits, kills any process still carrying the token and
   removes this runtime's ``/dev/shm`` pools, so nothing outlives the block.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Dict, List, Optional

logger = logging.getLogger("parsl_dragon.server.boot")

TOKEN_VAR = "PARSL_DRAGON_BLOCK_TOKEN"
STOP_GRACE_SECONDS = 10.0


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


def block_environment(token: str) -> Dict[str, str]:
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
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
    """Runs the runtime as a child, forwards stop signals, cleans up afterwards."""

    def __init__(self, command: List[str], env: Dict[str, str], log_path: str, token: str) -> None:
        self.command, self.env, self.log_path, self.token = command, env, log_path, token
        self.child: Optional[subprocess.Popen] = None
        self.stop_requested = 0.0

    def _on_signal(self, signum, _frame) -> None:
        logger.info("Received %s: stopping the runtime", signal.Signals(signum).name)
        if not self.stop_requested:
            self.stop_requested = time.monotonic()
            if self.child is not None and self.child.poll() is None:
                self.child.send_signal(signal.SIGINT)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
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
            if self.stop_requested and time.monotonic() - self.stop_requested > STOP_GRACE_SECONDS:
                logger.warning("Runtime did not stop within %.0fs: killing it", STOP_GRACE_SECONDS)
                self.child.kill()
                kill_leftovers(self.token)


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
    server_args = [a for a in args.server_args if a != "--"] + ["--launcher-pid", str(os.getpid())]
    token = uuid.uuid4().hex
    env = block_environment(token)
    try:
        command = dragon_command(choose_transport(args.transport), env, server_args)
    except FileNotFoundError as exc:
        logger.error("%s", exc)
        print(f"parsl-dragon boot: {exc}", file=sys.stderr)
        return 127
    return Boot(command, env, os.path.join(args.block_dir, "dragon.log"), token).run()


if __name__ == "__main__":
    sys.exit(main())
