"""The project's vocabulary: every name and default that more than one module uses, written once.

Pure (imports only :mod:`parsl_dragon.errors`), so every process may import it: the driver,
the block's boot process, the server, its workers and the code that runs inside tasks.

* **PMI backends** of MPI tasks and the default (``DragonExecutor(pmi=)``, the resource key
  ``pmi``; the driver fills it into every MPI task's spec).
* **Transports** of a block's runtime (``DragonExecutor(transport=)``, boot's ``--transport``).
* **Environment variables**: the ``PARSL_DRAGON_*`` settings a user may set, and the ones we
  set for the processes we start (block token, worker link, task id, rank report).
* **Timeouts**: milliseconds end to end, ``-1`` (:data:`NO_LIMIT`) means no limit everywhere;
  :func:`parse_timeout_ms` is the one parser (executor arguments, environment, server flags)
  and :func:`timeout_seconds` turns a value into what a wait call takes.
"""
from __future__ import annotations

from typing import Optional, Tuple

# --- PMI: how an MPI task's ranks find each other -----------------------------------------
PMI_BACKENDS: Tuple[str, ...] = ("cray", "pmix", "mpiexec", "none")
DEFAULT_PMI = "mpiexec"  # one mpiexec (MPICH hydra) starts the ranks; works without PALS or PMIx

# --- Transports of a block's Dragon runtime -------------------------------------------------
AUTO_TRANSPORT = "auto"  # hsta where Dragon's HSTA agent is installed, tcp otherwise
TRANSPORTS: Tuple[str, ...] = ("hsta", "tcp", AUTO_TRANSPORT)
DEFAULT_TRANSPORT = AUTO_TRANSPORT

# --- Environment: settings a user may set (argument > variable > default) -----------------
ENV_SERVER_PATH = "PARSL_DRAGON_SERVER_PATH"
ENV_TRANSPORT = "PARSL_DRAGON_TRANSPORT"
ENV_STARTUP_TIMEOUT = "PARSL_DRAGON_STARTUP_TIMEOUT"
ENV_TIMEOUT = "PARSL_DRAGON_TIMEOUT"
ENV_KEY_PATH = "PARSL_DRAGON_KEY_PATH"
ENV_RANK_STARTUP_TIMEOUT = "PARSL_DRAGON_RANK_STARTUP_TIMEOUT"
ENV_OWNER_TIMEOUT = "PARSL_DRAGON_OWNER_TIMEOUT"
ENV_MAX_PAYLOAD = "PARSL_DRAGON_MAX_PAYLOAD"  # bytes; also server -> workers: the limit of a result
ENV_KEEP_RESULTS_OVER = "PARSL_DRAGON_KEEP_RESULTS_OVER"  # bytes: results this large stay in their block
ENV_KEPT_RESULTS_MEMORY = "PARSL_DRAGON_KEPT_RESULTS_MEMORY"  # bytes per node for the block's kept results

# --- Environment: what we set for the processes we start -------------------------------------
ENV_BLOCK_TOKEN = "PARSL_DRAGON_BLOCK_TOKEN"            # every process of a block (teardown finds them)
ENV_NODES_PER_BLOCK = "PARSL_DRAGON_NODES_PER_BLOCK"    # DragonLauncher -> boot
ENV_WORKER_ADDRESS = "PARSL_DRAGON_WORKER_ADDRESS"      # server -> workers: the backend socket
ENV_WORKER_SECRET = "PARSL_DRAGON_WORKER_SECRET"        # server -> workers: their CURVE secret key
ENV_WORKER_SERVER_KEY = "PARSL_DRAGON_WORKER_SERVER_KEY"  # server -> workers: the server's public key
ENV_SERVER_ID = "PARSL_DRAGON_SERVER_ID"                # server -> workers
ENV_SERVER_HOST = "PARSL_DRAGON_SERVER_HOST"            # server -> workers: the host its local socket is on
ENV_WORKER_LOCAL_ADDRESS = "PARSL_DRAGON_WORKER_LOCAL_ADDRESS"  # server -> workers of its host: ipc://...
ENV_LOCAL_LINKS = "PARSL_DRAGON_LOCAL_LINKS"            # "0": same-host links use TCP + CURVE too
ENV_TASK = "PARSL_DRAGON_TASK"                          # worker -> MPI task: the server's task id
ENV_RANK_REPORT = "PARSL_DRAGON_RANK_REPORT"            # worker -> MPI task: where failing ranks are noted
ENV_RANK_DIR = "PARSL_DRAGON_RANK_DIR"                  # worker -> MPI task: its private dir (launch FIFO)
ENV_WORKER_PID = "PARSL_DRAGON_WORKER_PID"              # worker -> MPI task: who answers its launches
ENV_PMI_PROBLEM = "PARSL_DRAGON_PMI_PROBLEM"            # worker -> MPI task: why its PMI backend cannot work
ENV_ACCELERATORS = "PARSL_DRAGON_ACCELERATORS"          # server -> workers: available_accelerators, if set
ENV_RANK_GPUS = "PARSL_DRAGON_RANK_GPUS"                # worker -> mpiexec task: "host=id,id;host=id,id"
ENV_GPUS_PER_RANK = "PARSL_DRAGON_GPUS_PER_RANK"        # worker -> mpiexec task: its gpus_per_rank
# --- Links: the most one frame may carry (wire/protocol.py splits larger payloads; receivers cap at it) --
LINK_MAX_FRAME_BYTES = 1 << 30  # what a sender puts in one frame at most
# libzmq checks MAXMSGSIZE against the frame on the wire, which CURVE makes 33 bytes larger
# ("\x07MESSAGE", nonce, MAC, flags); a receiver allows that on top, or a frame within 33 bytes
# of the limit would pass the sender's check and still cut its link.
CURVE_FRAME_OVERHEAD = 33
LINK_MAX_WIRE_FRAME_BYTES = LINK_MAX_FRAME_BYTES + CURVE_FRAME_OVERHEAD  # receivers' MAXMSGSIZE
RANK_LINK_SUFFIX = "/ranks"  # a worker's rank link (task/rank_service.py) is "<worker id>/ranks"
# What a process needs to open a worker link to its server (workers and their rank links, the radio).
WORKER_LINK_VARS: Tuple[str, ...] = (ENV_WORKER_ADDRESS, ENV_WORKER_SECRET, ENV_WORKER_SERVER_KEY)

# A payload (a task's arguments or result) may be as large as memory allows: the default limit is
# this share of the driver host's memory (host/memory.py says why a quarter).
MAX_PAYLOAD_MEMORY_SHARE = 4
# Kept results (keep_result): each node of a block gives its distributed dictionary this share of
# its memory unless kept_results_memory says otherwise (host/memory.py).
KEPT_RESULTS_MEMORY_SHARE = 8

# --- Leases: both ends send a Heartbeat every period; a peer silent for period x threshold is lost --
DEFAULT_HEARTBEAT_PERIOD_S = 5.0
DEFAULT_HEARTBEAT_THRESHOLD = 3
LOOPBACK = "127.0.0.1"  # what a block on the driver's own host publishes (nothing else can reach it)

# --- Timeouts (milliseconds; NO_LIMIT waits forever) -----------------------------------------
NO_LIMIT = -1
DEFAULT_STARTUP_TIMEOUT_MS = 300_000  # a block's job until its server answers
DEFAULT_TIMEOUT_MS = 30_000           # one request to a server (handshake, status)
# Base time for an MPI task's ranks to start; the server adds RANK_STARTUP_MS_PER_RANK per rank
# (ProcessGroup start-up grows with the rank count and the node count).
DEFAULT_RANK_STARTUP_TIMEOUT_MS = 60_000
RANK_STARTUP_MS_PER_RANK = 10
# In a block's directory: the server writes why it refused to start (server/limits.py), and boot
# then does not start the runtime again, as it does after a crash (server/runtime.py).
SERVER_REFUSED_FILE = "server-refused"
# Time a block's server waits, once it has published its connection file, for its driver to
# connect; then it stops, so a block whose driver died during start-up does not hold the
# allocation (the driver's watcher connects within a second of the file appearing).
DEFAULT_OWNER_TIMEOUT_MS = 60_000


def errors():
    """:mod:`parsl_dragon.errors`, imported on first use. It roots our error tree in Parsl's, so
    importing it imports all of Parsl (~0.6 s): code on a block's start-up path (the boot
    process, ``host/``, the key checks) raises through this and pays that only when something
    is wrong, not before the runtime starts."""
    from parsl_dragon import errors as module
    return module


def parse_timeout_ms(value: object, name: str) -> int:
    """A timeout in milliseconds: a positive integer, or ``-1`` (:data:`NO_LIMIT`) for no limit.

    ``name`` says where the value came from (an argument, a variable, a flag) for the error.
    """
    try:
        ms = int(str(value).strip())
    except ValueError as exc:
        raise errors().ConfigurationError(
            f"{name} must be an integer number of milliseconds or -1, got {value!r}") from exc
    if ms == NO_LIMIT or ms > 0:
        return ms
    raise errors().ConfigurationError(f"{name} must be > 0 (milliseconds) or -1 (no limit), got {ms}")


def parse_bytes(value: object, name: str) -> int:
    """A size in bytes: a positive integer."""
    try:
        size = int(str(value).strip())
    except ValueError as exc:
        raise errors().ConfigurationError(f"{name} must be an integer number of bytes, got {value!r}") from exc
    if size <= 0:
        raise errors().ConfigurationError(f"{name} must be > 0 bytes, got {size}")
    return size


def timeout_seconds(ms: int) -> Optional[float]:
    """A timeout for a wait call: seconds, or ``None`` for :data:`NO_LIMIT`."""
    return None if ms == NO_LIMIT else ms / 1000.0


def parse_transport(value: object, name: str) -> str:
    """One of :data:`TRANSPORTS` (case-insensitive)."""
    transport = str(value).strip().lower()
    if transport not in TRANSPORTS:
        raise errors().ConfigurationError(f"{name} must be one of {', '.join(TRANSPORTS)}; got {value!r}")
    return transport


def parse_pmi(value: object, name: str) -> str:
    """One of :data:`PMI_BACKENDS`."""
    if not isinstance(value, str) or value not in PMI_BACKENDS:
        raise errors().ConfigurationError(f"{name} must be one of {', '.join(PMI_BACKENDS)}, got {value!r}")
    return value


# --- A block's boot process (server/boot.py; parsl-dragon teardown waits for it) -------------
BOOT_MODULE = "parsl_dragon.server.boot"  # `python -m BOOT_MODULE ...`: what a provider runs per block
RUNTIME_STOP_GRACE_SECONDS = 10.0  # boot: from asking its runtime to stop to killing it
