"""Entry point of the Dragon server: runs as the head process of a block's runtime.

``boot`` starts it as ``dragon ... python -m parsl_dragon.server.main ARGS``.
It loads the server's CURVE keys and the trusted client keys from the key
directory, builds the backend, starts the workers, then imports and builds the
service, and turns SIGTERM/SIGINT into a graceful stop. Before any worker starts it raises its
file descriptor limit and refuses, naming the limit and the setting, workers whose links it
could not hold (``server/limits.py``).

``--simulated-nodes N`` (``benchmarks/scale.py`` only) runs the same server over N made-up
nodes whose workers are not processes but a benchmark's simulated links (``server/simulated.py``).

Workers first: a worker and the service each take most of a second to import (Parsl,
mostly), so this module imports neither the service nor Parsl before the workers are
started (``server/worker_side.py``); both imports then run at once.
"""
from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import socket
import sys
from typing import List, Optional

from parsl_dragon.core.accelerators import parse_accelerators
from parsl_dragon.host import startup
from parsl_dragon.host.memory import default_kept_results_memory, default_max_payload_bytes
from parsl_dragon.server import address, limits
from parsl_dragon.server.options import ServerOptions
from parsl_dragon.server.worker_side import WorkerSide
from parsl_dragon.vocabulary import (
    DEFAULT_HEARTBEAT_PERIOD_S,
    DEFAULT_HEARTBEAT_THRESHOLD,
    DEFAULT_OWNER_TIMEOUT_MS,
    DEFAULT_RANK_STARTUP_TIMEOUT_MS,
    LOOPBACK,
    RANK_STARTUP_MS_PER_RANK,
    SERVER_REFUSED_FILE,
    errors,
    parse_timeout_ms,
)
from parsl_dragon.wire import security

logger = logging.getLogger(__name__)
SERVICE_LOGGER = "parsl_dragon.server.service"  # the module that logs "Worker ... ready"
_STACK_DUMPS = None  # the open log file faulthandler writes to (kept open for the server's life)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parsl_dragon.server.main", description=__doc__)
    parser.add_argument("--connection-file", required=True)
    parser.add_argument("--log-file", required=True)
    parser.add_argument("--key-dir", required=True)
    parser.add_argument("--trust", action="append", default=[], help="extra trusted client public key (z85)")
    parser.add_argument("--host-address", default=LOOPBACK)
    parser.add_argument("--workers-per-node", type=int, default=None)
    parser.add_argument("--driver-host", default=None,
                        help="the driver's node, inside the block (in its own job): one core there is kept for it")
    parser.add_argument("--cores-per-node", type=int, default=None,
                        help="cores the slot table counts per node (default: what Dragon reports)")
    parser.add_argument("--accelerators", type=_accelerators, default=None,
                        help="GPU ids of every node, comma-separated (default: Dragon's count, ids 0..n-1)")
    parser.add_argument("--max-payload-bytes", type=int, default=None,
                        help="largest task result a worker sends (default: a quarter of this node's memory)")
    parser.add_argument("--keep-results-over", type=int, default=None,
                        help="results of at least this many bytes stay in the block (default: only those asked)")
    parser.add_argument("--kept-results-memory", type=int, default=None,
                        help="bytes per node for kept results (default: an eighth of the node's memory)")
    parser.add_argument("--heartbeat-period", type=float, default=DEFAULT_HEARTBEAT_PERIOD_S)
    parser.add_argument("--heartbeat-threshold", type=int, default=DEFAULT_HEARTBEAT_THRESHOLD)
    parser.add_argument("--owner-timeout-ms", type=_timeout_ms, default=DEFAULT_OWNER_TIMEOUT_MS,
                        help="ms to wait, once the connection file is written, for the owner; -1: no limit")
    parser.add_argument("--rank-startup-timeout-ms", type=_timeout_ms, default=DEFAULT_RANK_STARTUP_TIMEOUT_MS,
                        help=f"ms an MPI task's ranks may take to start, plus {RANK_STARTUP_MS_PER_RANK} ms per rank; "
                             "-1: no limit")
    parser.add_argument("--job-id", default=None,
                        help="batch job id for the connection file (default: $SLURM_JOB_ID or $PBS_JOBID)")
    parser.add_argument("--block-id", default=None)
    parser.add_argument("--launch-id", default=None, help="the executor's id of this block launch (connection file)")
    parser.add_argument("--launcher-pid", type=int, default=None)
    parser.add_argument("--simulated-nodes", type=int, default=None,
                        help="benchmarks only: N made-up nodes, no worker processes; simulated workers connect "
                             "with the link written to the block directory (server/simulated.py)")
    parser.add_argument("--debug", action="store_true")
    return parser


def setup_logging(path: str, debug: bool) -> None:
    """Log to ``path``; ``kill -USR1 <server pid>`` appends every thread's stack to it (for a
    server that hangs inside a runtime call)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    global _STACK_DUMPS
    _STACK_DUMPS = open(path, "a")
    faulthandler.register(signal.SIGUSR1, file=_STACK_DUMPS, all_threads=True)
    logging.basicConfig(
        filename=path, level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(name)s:%(lineno)d %(process)d %(threadName)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S")


class FirstWorkerReady(logging.Handler):
    """Notes the block's ``WORKER_READY`` milestone at the service's first "Worker ... ready"
    record (its own time), then lets go of the service's logger."""

    MESSAGE = "Worker %s ready"

    def __init__(self, block_dir: str) -> None:
        super().__init__(level=logging.INFO)
        self.block_dir = block_dir

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith(self.MESSAGE):
            startup.note(self.block_dir, startup.WORKER_READY, at=record.created)
            logging.getLogger(record.name).removeHandler(self)


def note_startup(log_file: str) -> None:
    """Note the server's start-up milestones in its block directory (that of its log file)."""
    block_dir = os.path.dirname(os.path.abspath(log_file))
    startup.note_process_start(block_dir, startup.SERVER_STARTED)
    startup.note(block_dir, startup.SERVER_IMPORTED)
    logging.getLogger(SERVICE_LOGGER).addHandler(FirstWorkerReady(block_dir))


def resolve_host_address(value: str) -> str:
    """``--host-address`` resolved here, on the node Dragon started the server on."""
    resolved = address.host_address(value)
    logger.info("Server address: %s (from --host-address %s) on %s", resolved, value, socket.gethostname())
    return resolved


def batch_job_id(env) -> Optional[str]:
    """The allocation this server runs in (Slurm or PBS), None outside one."""
    return env.get("SLURM_JOB_ID") or env.get("PBS_JOBID") or None


def _timeout_ms(text: str) -> int:
    """argparse type of a ``--*-timeout-ms`` flag: the project's one timeout parser."""
    try:
        return parse_timeout_ms(text, "the flag's value")
    except Exception as exc:  # ConfigurationError (naming its class would import Parsl); argparse names the flag
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _accelerators(text: str):
    """argparse type of ``--accelerators``: the ids ``available_accelerators`` stands for."""
    try:
        return parse_accelerators(text, "--accelerators")
    except Exception as exc:  # ConfigurationError, as above
        raise argparse.ArgumentTypeError(str(exc)) from exc


def options_from(args: argparse.Namespace) -> ServerOptions:
    server_keys = security.load_pair(args.key_dir, security.SERVER, create=False)
    trusted = [security.load_public(args.key_dir, security.CLIENT)] + [k.encode() for k in args.trust]
    return ServerOptions(
        connection_file=os.path.abspath(args.connection_file), log_path=os.path.abspath(args.log_file),
        server_keys=server_keys, client_keys=trusted, host_address=resolve_host_address(args.host_address),
        cores_per_node=args.cores_per_node, accelerators=args.accelerators, driver_host=args.driver_host,
        max_payload_bytes=args.max_payload_bytes or default_max_payload_bytes(),
        keep_results_over=args.keep_results_over,
        kept_results_memory=args.kept_results_memory or default_kept_results_memory(),
        heartbeat_period=args.heartbeat_period, heartbeat_threshold=args.heartbeat_threshold,
        owner_timeout_ms=args.owner_timeout_ms, launch_id=args.launch_id,
        job_id=args.job_id or batch_job_id(os.environ), block_id=args.block_id, launcher_pid=args.launcher_pid,
        rank_startup_timeout_ms=args.rank_startup_timeout_ms)


def block_dir(args: argparse.Namespace) -> str:
    """The block's directory: the one the server's log is in."""
    return os.path.dirname(os.path.abspath(args.log_file))


def make_backend(args: argparse.Namespace):
    """The block's backend (Dragon's, or simulated nodes), once this process can hold its workers'
    links (``ServerCapacityError`` otherwise)."""
    if args.simulated_nodes is not None:
        from parsl_dragon.server.simulated import SimulatedBackend
        backend = SimulatedBackend(args.simulated_nodes, block_dir(args),
                                   cores=args.cores_per_node, workers_per_node=args.workers_per_node)
    else:
        from parsl_dragon.server.backend import DragonBackend
        backend = DragonBackend(workers_per_node=args.workers_per_node)
    limits.check_capacity(backend)
    return backend


def start_server(options: ServerOptions, backend):
    """Start the workers, then import and build the service while they import Parsl. The
    service, or None when either step failed (then nothing this started is left running)."""
    side = WorkerSide()
    try:
        side.start(options, backend)
        from parsl_dragon.server.service import Server
        return Server(options, backend, side)
    except Exception:
        logger.exception("Server could not be started")
        try:
            backend.stop(patience=0.5)
        except Exception:
            logger.exception("Stopping workers failed")
        side.close()
        return None


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file, args.debug)
    note_startup(args.log_file)
    logger.info("Dragon server starting: pid %d, argv %s", os.getpid(), sys.argv[1:])
    try:
        options = options_from(args)
        backend = make_backend(args)
    except Exception as exc:
        if isinstance(exc, errors().ServerCapacityError):  # the error path alone imports the tree (Parsl)
            logger.error("Server refuses to start: %s", exc)
            with open(os.path.join(block_dir(args), SERVER_REFUSED_FILE), "w") as out:
                out.write(f"{exc}\n")  # boot reads it: a refusal is not retried like a crash
            return 2
        logger.exception("Server could not be set up")
        return 2
    early: List[str] = []  # stop requests that came while the service was being imported
    server = None

    def _stop(signum, _frame):
        reason = f"signal {signal.Signals(signum).name}"
        if server is None:
            early.append(reason)
        else:
            server.request_stop(reason)

    signal.signal(signal.SIGTERM, _stop)  # before the workers start: they must not be left behind
    signal.signal(signal.SIGINT, _stop)
    server = start_server(options, backend)
    if server is None:
        return 1
    for reason in early:
        server.request_stop(reason)
    return server.run()


if __name__ == "__main__":
    sys.exit(main())
