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

This module chooses and prepares (1-4); :mod:`parsl_dragon.server.bootdir` holds the block
dir, its lock and the cleanup shim; :class:`parsl_dragon.server.runtime.Boot` runs the
runtime (5-7) with the proofs of :mod:`parsl_dragon.host` (token, pidfds, shm pools).
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import shutil
import socket
import sys
import uuid
from typing import Dict, List, Optional

from parsl_dragon.host import startup
from parsl_dragon.host.allocation import check_can_span, current_allocation, pbs_hosts
from parsl_dragon.host.processes import DriverWatch
from parsl_dragon.server.bootdir import shim_dir, take_block_lock, write_file_nofollow
from parsl_dragon.server.runtime import Boot
from parsl_dragon.vocabulary import (
    AUTO_TRANSPORT,
    BOOT_MODULE,
    DEFAULT_TRANSPORT,
    ENV_BLOCK_TOKEN,
    ENV_NODES_PER_BLOCK,
    SERVER_REFUSED_FILE,
    TRANSPORTS,
    errors,
)
from parsl_dragon.wire.security import private_directory

logger = logging.getLogger(__name__)

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


# srun reads these from its environment; a batch script inherits them from the job's options
# (e.g. --ntasks-per-node=2), and Dragon's own `srun --nodes=N --ntasks=N` then fails on them.
SRUN_LAYOUT_VARS = ("SLURM_NTASKS", "SLURM_NPROCS", "SLURM_NTASKS_PER_NODE", "SLURM_NTASKS_PER_CORE",
                    "SLURM_NTASKS_PER_SOCKET", "SLURM_NTASKS_PER_GPU", "SLURM_TASKS_PER_NODE", "SLURM_DISTRIBUTION",
                    "SLURM_CPUS_PER_TASK", "SRUN_CPUS_PER_TASK", "SLURM_GPUS_PER_TASK", "SLURM_MEM_PER_CPU")


def allocation_nodes(env: Dict[str, str]) -> int:
    """Number of nodes of the allocation we run in (0 outside any allocation)."""
    job = current_allocation(env)
    return job.nodes if job is not None else 0


def runtime_nodes(env: Dict[str, str]) -> int:
    """Nodes the runtime spans: the block's size (``PARSL_DRAGON_NODES_PER_BLOCK``, exported by
    DragonLauncher) where the job has more, else the job's (0 outside any allocation)."""
    have, wanted = allocation_nodes(env), env.get(ENV_NODES_PER_BLOCK, "").strip()
    if have and wanted.isdigit() and 1 <= int(wanted) < have:
        return int(wanted)
    return have


def launch_mode_args(env: Dict[str, str]) -> List[str]:
    """``-s`` for one node or no allocation (Dragon refuses to start when it sees srun
    but no allocation); ``-w slurm`` / ``-w pbs+pals`` for a multi-node block."""
    if runtime_nodes(env) <= 1:
        return ["-s"]
    return ["-w", "slurm"] if env.get("SLURM_JOB_ID") else ["-w", "pbs+pals"]


def runtime_environment(env: Dict[str, str], block_dir: str) -> Dict[str, str]:
    """What Dragon's launcher gets: without the task-layout variables its srun would inherit, and
    shrunk to the block's nodes where the block spans fewer than the job (Slurm: the node count
    Dragon's srun asks for; PBS: a node file of the block's hosts, this one first)."""
    env = dict(env)
    if not env.get("SLURM_JOB_ID"):
        nodes = runtime_nodes(env)
        if nodes and nodes < allocation_nodes(env):
            hosts = pbs_hosts(env["PBS_NODEFILE"])
            here = [h for h in hosts if h.split(".")[0] == socket.gethostname().split(".")[0]]
            chosen = (here + [h for h in hosts if h not in here])[:nodes]
            env["PBS_NODEFILE"] = write_file_nofollow(block_dir, "nodefile", "".join(h + "\n" for h in chosen), 0o600)
        return env
    dropped = [name for name in SRUN_LAYOUT_VARS if env.pop(name, None) is not None]
    if dropped:
        logger.info("Not passing %s to Dragon's srun (the job's task layout, not the runtime's)", ", ".join(dropped))
    nodes = runtime_nodes(env)
    if nodes and nodes < allocation_nodes(env):
        env["SLURM_JOB_NUM_NODES"] = env["SLURM_NNODES"] = str(nodes)
    return env


def step_problem(env: Dict[str, str]) -> Optional[str]:
    """Why a multi-node runtime cannot start here (inside a Slurm job step), or None."""
    if runtime_nodes(env) > 1 and env.get("SLURM_JOB_ID") and env.get("SLURM_STEP_ID"):
        job = current_allocation(env)
        assert job is not None
        try:
            check_can_span(job, runtime_nodes(env))
        except errors().ConfigurationError as exc:  # evaluated only when something was raised
            return exc.message
    return None


def dragon_command(transport: str, env: Dict[str, str], server_args: List[str]) -> List[str]:
    """``dragon <launch mode> -t <transport> python -m parsl_dragon.server.main <server args>``, with
    the ``dragon`` found on ``env``'s PATH (:class:`FileNotFoundError` if there is none)."""
    dragon = shutil.which("dragon", path=env.get("PATH"))
    if dragon is None:
        raise FileNotFoundError("the 'dragon' launcher is not on PATH; install dragonhpc in this environment")
    return [dragon, *launch_mode_args(env), "-t", transport,
            sys.executable, "-m", "parsl_dragon.server.main", *server_args]


def block_environment(token: str, shim_dir: Optional[str] = None) -> Dict[str, str]:
    """The runtime's environment: our token, the venv's bin/ (and the cleanup shim) first on PATH."""
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    if shim_dir is not None:
        env["PATH"] = shim_dir + os.pathsep + env["PATH"]
    env[ENV_BLOCK_TOKEN] = token
    return env


def server_flag(server_args: List[str], flag: str) -> Optional[str]:
    """The value of ``flag`` among the server's arguments, or None."""
    if flag in server_args[:-1]:
        return server_args[server_args.index(flag) + 1]
    return None


def check_block_size(env: Dict[str, str]) -> None:
    """Warn when the block asked for more nodes than the allocation we see has."""
    wanted, have = env.get(ENV_NODES_PER_BLOCK), allocation_nodes(env)
    if wanted and wanted.isdigit() and have and int(wanted) > have:
        logger.warning("The block asked for %s nodes but the allocation has %d: the runtime uses %d",
                       wanted, have, have)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=BOOT_MODULE, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block-dir", required=True, help="directory for this block's logs")
    parser.add_argument("--transport", default=DEFAULT_TRANSPORT, choices=TRANSPORTS)
    parser.add_argument("--driver-pid", type=int, default=None,
                        help="stop the runtime when this process (the driver, on this host) is gone")
    parser.add_argument("server_args", nargs=argparse.REMAINDER, help="-- then arguments for the server")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one block: prepare its directory, then its runtime until it is over; the exit code."""
    args = build_parser().parse_args(argv)
    driver = DriverWatch(args.driver_pid) if args.driver_pid is not None else None  # before anything slow
    try:
        private_directory(args.block_dir)  # ours and 0700: its bin/ goes first on PATH
    except (errors().InsecurePath, OSError) as exc:
        print(f"parsl-dragon boot: {exc}", file=sys.stderr)  # no log file: the directory is not ours
        return 2
    logging.basicConfig(filename=os.path.join(args.block_dir, "boot.log"), level=logging.INFO,
                        format="%(asctime)s boot %(process)d %(levelname)s %(message)s")
    lock = take_block_lock(args.block_dir)
    if lock is None:
        return _stop(f"another boot of this block already runs (lock {args.block_dir}/boot.lock): the launcher "
                     "started more than one copy; this one exits (use parsl_dragon.driver.launchers.DragonLauncher)",
                     DUPLICATE_EXIT)
    startup.note_process_start(args.block_dir, startup.BOOT_STARTED)
    server_args = [a for a in args.server_args if a != "--"]
    server_args += ["--launcher-pid", str(os.getpid())]
    token = uuid.uuid4().hex
    try:
        env = block_environment(token, shim_dir(args.block_dir))
    except (errors().InsecurePath, OSError) as exc:
        return _stop(exc, 2)
    check_block_size(env)
    problem = step_problem(env)
    if problem:
        return _stop(problem, 2)
    try:
        env = runtime_environment(env, args.block_dir)
    except (errors().InsecurePath, OSError) as exc:
        return _stop(exc, 2)
    logger.info("Block on %s: allocation of %d node(s) (0: none), runtime on %d, launch mode %s%s",
                socket.gethostname(), allocation_nodes(env), runtime_nodes(env), " ".join(launch_mode_args(env)),
                f", following driver pid {args.driver_pid}" if driver else "")
    try:
        command = dragon_command(choose_transport(args.transport), env, server_args)
    except FileNotFoundError as exc:
        return _stop(exc, 127)
    return Boot(command, env, os.path.join(args.block_dir, "dragon.log"), token,
                connection_file=server_flag(server_args, "--connection-file"), driver=driver,
                startup_dir=args.block_dir, refused_file=os.path.join(args.block_dir, SERVER_REFUSED_FILE)).run()


def _stop(why: object, code: int) -> int:
    """Say why boot stops early, in boot.log and on stderr (the job's output); return ``code``."""
    logger.error("%s", why)
    print(f"parsl-dragon boot: {why}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
