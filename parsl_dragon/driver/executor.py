"""DragonExecutor: a Parsl block executor whose blocks are Dragon runtimes with our server inside.

Lifecycle::

    start()      resolve settings (argument > PARSL_DRAGON_* > default), make/check keys,
                 attach to a live server at server_path, or launch init_blocks blocks
    block        provider runs `python -m parsl_dragon.server.boot ...`; a watcher thread waits for
                 the connection file of that launch and connects (CURVE, versioned handshake)
                 only to a server whose key is the one in key_path, through files and
                 directories only this user can write
    submit()     pack the task (Parsl's pack_apply_message) and queue it; the queue drains, oldest
                 first, into connected servers with room (a server holds at most its workers +
                 prefetch_capacity tasks), least loaded first: on submit, on every result batch
                 and when a block's server connects, so a block that starts late gets its share
    results      the client's result thread resolves futures (results, remote exceptions,
                 WorkerLost / ServerLost failures) and forwards monitoring records
    scale_in()   ask the block's server to stop, then let the provider cancel the job
    shutdown()   stop owned servers, detach from shared ones, cancel leftover jobs; idempotent

The executor holds the Parsl-facing glue; the work is done by its parts: ``blocks.BlockWatch``
(boot commands, a watcher per block, the end of jobs), ``futures.TaskTable`` (tasks, their
futures and the router, behind one lock) and ``client.DragonClient`` (the sessions and threads).
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import typeguard
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs.states import TERMINAL_STATES, JobState, JobStatus
from parsl.monitoring.radios.base import RadioConfig
from parsl.providers import LocalProvider
from parsl.providers.base import ExecutionProvider
from parsl.serialize import pack_apply_message
from parsl.utils import RepresentationMixin

from parsl_dragon.core.accelerators import as_flag, parse_accelerators
from parsl_dragon.core.spec import normalize_spec
from parsl_dragon.driver.blocks import BlockLaunch, BlockWatch, host_address, on_driver_host, shared_server
from parsl_dragon.driver.client import DragonClient
from parsl_dragon.driver.futures import BlockFigures, TaskTable, set_exception
from parsl_dragon.driver.kept import KeptResults
from parsl_dragon.driver.launchers import check_launcher, default_launcher
from parsl_dragon.driver.links import ServerLink
from parsl_dragon.driver.routing import RoutedServer, Send
from parsl_dragon.driver.scaling import STOP_WAIT_SECONDS, BlockScaling
from parsl_dragon.driver.settings import Settings, check_arguments, resolve_settings
from parsl_dragon.errors import (
    AuthenticationFailed,
    DragonExecutorError,
    HandshakeTimeout,
    PayloadTooLarge,
    ServerLost,
)
from parsl_dragon.host.allocation import job_to_span
from parsl_dragon.host.startup import Timeline
from parsl_dragon.task.monitoring import DragonRadio
from parsl_dragon.vocabulary import DEFAULT_HEARTBEAT_PERIOD_S, DEFAULT_HEARTBEAT_THRESHOLD, DEFAULT_PMI
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire import security
from parsl_dragon.wire.connection import ConnectionInfo, connection_path, remove_connection
from parsl_dragon.wire.frames import NO_SERIALIZER_WARNING

logger = logging.getLogger(__name__)

DEFAULT_PREFETCH = 32  # benchmarks/throughput.py here: 0 -> 506 tasks/s, 8 -> 1035, 32 -> 1155, unbounded 1160


class DragonExecutor(BlockScaling, BlockProviderExecutor, RepresentationMixin):
    """Run Parsl apps on Dragon runtimes started in the provider's blocks.

    Parameters
    ----------
    label : str
        Executor label.
    provider : ExecutionProvider, optional
        Where blocks run. Default: one block on this machine, or, inside a Slurm or PBS
        job, one block spanning that job (see ``in_allocation``).
    in_allocation : bool, optional
        Run in the batch job the driver lives in (``sbatch workflow.sh``, ``salloc``, a PBS
        job): one Dragon runtime over the job's nodes (or ``allocation_nodes`` of them), a
        published address that reaches the server on whichever node Dragon starts it, a core
        kept for the driver on its node, and the job itself never cancelled. ``None``
        (default): do so when there is no ``provider`` and the driver runs inside a job;
        ``True``: require a job; ``False``: never (one block on this node only).
    allocation_nodes : int, optional
        Nodes of the job the block spans (default: all of them).
    workers_per_node : int, optional
        Persistent Python workers per node. Default: cores - 1 (Dragon's runtime
        busy-polls and needs a core), at least 1.
    cores_per_node : int, optional
        Cores per node in the server's slot table (default: what Dragon reports).
        Serial tasks take one core (``cpus_per_rank``), MPI tasks
        ``ranks_per_node x cpus_per_rank`` on each of their nodes.
    available_accelerators : int or list of str, optional
        GPU ids of every node, as HTEX's (``n``: ``"0"``..``"n-1"``; tiles such as ``"0.0"``;
        an id listed twice is shared). Default: Dragon's count per node. A task's
        ``gpus_per_rank`` ids are its GPU variables while it runs (docs/gpus.md).
    pmi : str
        Default PMI backend of MPI tasks: ``mpiexec`` (the site's mpiexec, started as
        one Dragon process on the task's first node), ``cray`` (Cray PMI / PALS),
        ``pmix`` or ``none`` (ranks without wire-up). A task's ``pmi`` key overrides it.
    server_path : str, optional
        Directory of a shared server (``PARSL_DRAGON_SERVER_PATH``): attach to the
        live server whose connection file is there, else start one that writes it.
    transport : str, optional
        ``hsta``, ``tcp`` or ``auto`` (``PARSL_DRAGON_TRANSPORT``, default auto:
        HSTA where it can start, else tcp).
    startup_timeout_ms : int, optional
        Time for a block to produce a live server (``PARSL_DRAGON_STARTUP_TIMEOUT``,
        default 300000; -1 waits forever).
    timeout_ms : int, optional
        Send/receive timeout of requests to a server, e.g. the handshake
        (``PARSL_DRAGON_TIMEOUT``, default 30000; -1 waits forever).
    key_path : str, optional
        CURVE key directory (``PARSL_DRAGON_KEY_PATH``, default ``~/.parsl_dragon/keys``).
    rank_startup_timeout_ms : int, optional
        Time an MPI task's ranks may take to start before the server answers the launch
        with an error and abandons it (``PARSL_DRAGON_RANK_STARTUP_TIMEOUT``, default
        60000, plus 10 ms per rank; -1 waits forever). Guards against PMI wire-ups that hang.
    owner_timeout_ms : int, optional
        Time a block's server waits, once it has written its connection file, for this
        executor to connect; then it stops and frees the block (``PARSL_DRAGON_OWNER_TIMEOUT``,
        default 60000; -1 waits forever). Blocks on this host also follow the driver:
        they stop as soon as the driver process is gone.
    heartbeat_period, heartbeat_threshold :
        Leases both ways: a peer silent for period x threshold seconds is lost.
    address : str, optional
        Address the server publishes for clients and workers. Default ``127.0.0.1`` for a
        block on this node alone, else ``auto`` (resolved on the node Dragon starts the server on).
    max_payload_bytes : int, optional
        Largest task arguments or result, in bytes (``PARSL_DRAGON_MAX_PAYLOAD``; default a
        quarter of this host's memory). Larger ones fail their task with ``PayloadTooLarge``.
    keep_results_over : int, optional
        Results of at least this many bytes (serialized) stay in their block's memory, and
        their futures hold references that behave like the values (docs/data.md)
        (``PARSL_DRAGON_KEEP_RESULTS_OVER``; default: off, only tasks whose resource
        specification says ``keep_result: True`` keep theirs).
    kept_results_memory : int, optional
        Bytes each node of a block gives its kept results (``PARSL_DRAGON_KEPT_RESULTS_MEMORY``;
        default an eighth of the node's memory). A result that does not fit travels instead.
    prefetch_capacity : int
        Tasks a server may hold beyond its worker count (HTEX's meaning). The rest wait
        in the executor and go to whichever server has room first, so blocks that
        connect later share the work. Default 32: enough queued at each server to keep
        short tasks flowing; 0 balances long tasks across blocks best.
    """

    @typeguard.typechecked
    def __init__(self, label: str = "dragon", provider: Optional[ExecutionProvider] = None,
                 in_allocation: Optional[bool] = None, allocation_nodes: Optional[int] = None,
                 workers_per_node: Optional[int] = None, cores_per_node: Optional[int] = None,
                 available_accelerators: Union[int, Sequence[str], None] = None, pmi: str = DEFAULT_PMI,
                 server_path: Optional[str] = None, transport: Optional[str] = None,
                 startup_timeout_ms: Optional[int] = None, timeout_ms: Optional[int] = None,
                 key_path: Optional[str] = None, rank_startup_timeout_ms: Optional[int] = None,
                 owner_timeout_ms: Optional[int] = None,
                 heartbeat_period: Union[int, float] = DEFAULT_HEARTBEAT_PERIOD_S,
                 heartbeat_threshold: int = DEFAULT_HEARTBEAT_THRESHOLD, address: Optional[str] = None,
                 prefetch_capacity: int = DEFAULT_PREFETCH, max_payload_bytes: Optional[int] = None,
                 keep_results_over: Optional[int] = None, kept_results_memory: Optional[int] = None,
                 worker_debug: bool = False,
                 block_error_handler: Union[bool, Callable] = True,
                 remote_monitoring_radio: Optional[RadioConfig] = None) -> None:
        self.in_allocation, self.allocation_nodes = in_allocation, allocation_nodes
        self.allocation = job_to_span(provider, in_allocation, allocation_nodes)
        if provider is None:
            nodes = self.allocation.span if self.allocation is not None else 1
            provider = LocalProvider(nodes_per_block=nodes, init_blocks=1, min_blocks=0, max_blocks=1,
                                     launcher=default_launcher())
        super().__init__(provider=provider, block_error_handler=block_error_handler)
        check_arguments(workers_per_node=workers_per_node, cores_per_node=cores_per_node, pmi=pmi,
                        heartbeat_period=heartbeat_period, heartbeat_threshold=heartbeat_threshold,
                        prefetch_capacity=prefetch_capacity)
        self.label, self.workers_per_node_arg = label, workers_per_node
        self.cores_per_node = cores_per_node
        self.available_accelerators = available_accelerators
        self._accelerators = parse_accelerators(available_accelerators, "available_accelerators")
        self.pmi = pmi
        self.server_path, self.transport, self.key_path = server_path, transport, key_path
        self.startup_timeout_ms, self.timeout_ms = startup_timeout_ms, timeout_ms
        self.rank_startup_timeout_ms, self.owner_timeout_ms = rank_startup_timeout_ms, owner_timeout_ms
        self.heartbeat_period, self.heartbeat_threshold = float(heartbeat_period), heartbeat_threshold
        self.address, self.prefetch_capacity, self.worker_debug = address, prefetch_capacity, worker_debug
        self.max_payload_bytes = max_payload_bytes
        self.keep_results_over, self.kept_results_memory = keep_results_over, kept_results_memory
        self.remote_monitoring_radio = remote_monitoring_radio or DragonRadio()
        self.settings: Optional[Settings] = None
        self._client: Optional[DragonClient] = None
        self._kept = KeptResults(lambda server_id, message: self._client.send(server_id, message))  # type: ignore
        self._table = TaskTable(self._tasks, prefetch_capacity, send=self._send, kept=self._kept)
        self._lock, self._router = self._table.lock, self._table.router
        self._blocks = BlockWatch(self.provider, lambda info: self._connect(info, owner=True),
                                  self._table.add_server, self._on_block_failed, cancelled=lambda: self._stopping)
        self._launches: Dict[str, BlockLaunch] = self._blocks.launches
        self._server_key: Optional[str] = None  # the only server public key this executor trusts
        self._attached = False
        self._early_blocks: Optional[List[str]] = None  # init_blocks launched by start(), not by the strategy
        self._stopping = self._started = False
        # Called (under the task table's lock; keep it short) with (task id, block id) pairs as tasks
        # are sent to a block's server: the Globus Compute engine reports them as running there.
        self.on_placed: Optional[Callable[[List[Tuple[int, Optional[str]]]], None]] = None

    # RepresentationMixin reads init args by name; workers_per_node is also Parsl's property.
    @property
    def workers_per_node(self) -> Union[int, float]:
        if self.workers_per_node_arg is not None:
            return self.workers_per_node_arg
        with self._lock:
            counts = [s.link.welcome.workers / max(1, len(s.link.welcome.nodes)) for s in self._servers]
        return max(counts) if counts else max(1, (os.cpu_count() or 2) - 1)

    # ---- start -----------------------------------------------------------
    def start(self) -> None:
        """Resolve settings, prepare keys, then attach to a shared server or launch blocks."""
        self.settings = resolve_settings(
            server_path=self.server_path, transport=self.transport, startup_timeout_ms=self.startup_timeout_ms,
            timeout_ms=self.timeout_ms, key_path=self.key_path, rank_startup_timeout_ms=self.rank_startup_timeout_ms,
            owner_timeout_ms=self.owner_timeout_ms, max_payload_bytes=self.max_payload_bytes,
            keep_results_over=self.keep_results_over, kept_results_memory=self.kept_results_memory)
        if self.provider is not None:
            check_launcher(getattr(self.provider, "launcher", None), getattr(self.provider, "nodes_per_block", None))
        client_keys = security.load_pair(self.settings.key_path, security.CLIENT)
        # The servers load the secret in the block; the driver pins the public half.
        self._server_key = security.load_pair(self.settings.key_path, security.SERVER).public.decode()
        security.private_directory(self._executor_dir)
        if self.settings.server_path is not None:
            security.private_directory(self.settings.server_path)
        super().start()
        self._client = DragonClient(
            client_keys, timeout_s=self.settings.timeout_s, heartbeat_period=self.heartbeat_period,
            heartbeat_threshold=self.heartbeat_threshold, on_results=self._on_results,
            on_monitoring=self._on_monitoring, on_server_lost=self._on_server_lost,
            on_reconnected=self._on_reconnected, on_fetched=self._kept.on_fetched)
        self._client.start()
        self._started = True
        if not self._attach_shared_server() and self.provider is not None:
            self._early_blocks = super().scale_out_facade(self.provider.init_blocks)  # not strategy_period later

    @property
    def _executor_dir(self) -> str:
        return os.path.join(self.run_dir, self.label)

    def _attach_shared_server(self) -> bool:
        """Attach to a live server at ``server_path``; False if there is none (a stale file is removed)."""
        server_path = self.settings.server_path if self.settings is not None else None
        info = shared_server(server_path) if server_path is not None else None
        if info is None:
            return False
        path = connection_path(server_path)  # type: ignore[arg-type]
        try:
            link = self._connect(info, owner=False)
        except HandshakeTimeout as exc:
            logger.warning("Server named in %s does not answer (%s); starting our own", path, exc)
            remove_connection(path, info.server_id)
            return False
        self._table.add_server(link, block_id=None)
        self._attached = True
        logger.info("Attached to shared server %s via %s", link.server_id, path)
        return True

    def _connect(self, info: ConnectionInfo, owner: bool) -> ServerLink:
        """Open a session, but only with a server holding the key in ``key_path``: a connection
        file naming another key was not written by our server, and our tasks must not go there."""
        if info.server_public_key != self._server_key:
            key_dir = self.settings.key_path if self.settings else "key_path"
            raise AuthenticationFailed(
                f"refusing the server at {info.address}: its public key {info.server_public_key[:12]}... is not "
                f"the server key in {key_dir} ({(self._server_key or '')[:12]}...); the connection file was not "
                "written by a server of this key directory (forged, or from another key_path)", self)
        link = self._client.connect(info, owner=owner)  # type: ignore[union-attr]
        self._kept.attach(link.server_id)
        return link

    # ---- blocks ----------------------------------------------------------
    def _get_launch_command(self, block_id: str) -> str:
        assert self.settings is not None, "start() must run before blocks are launched"
        return self._blocks.command(block_id, self._executor_dir, self.settings, {
            "owner_timeout_ms": self.settings.owner_timeout_ms,
            "host_address": host_address(self.address, self.provider, self._spans_nodes),
            "driver_host": socket.gethostname() if self.allocation is not None else None,
            "heartbeat_period": self.heartbeat_period, "heartbeat_threshold": self.heartbeat_threshold,
            "rank_startup_timeout_ms": self.settings.rank_startup_timeout_ms,
            "max_payload_bytes": self.settings.max_payload_bytes,
            "keep_results_over": self.settings.keep_results_over,
            "kept_results_memory": self.settings.kept_results_memory,
            "workers_per_node": self.workers_per_node_arg, "cores_per_node": self.cores_per_node,
            "accelerators": None if self._accelerators is None else as_flag(self._accelerators),
            "debug": self.worker_debug}, driver_pid=os.getpid() if on_driver_host(self.provider) else None)

    def _launch_block(self, block_id: str) -> Any:
        job_id = super()._launch_block(block_id)
        self._blocks.watch(block_id, job_id, self.settings.startup_timeout_s)  # type: ignore[union-attr]
        return job_id

    @property
    def _spans_nodes(self) -> bool:
        """Whether this executor's block spans several nodes of the driver's job."""
        return self.allocation is not None and self.allocation.span > 1

    @property
    def _servers(self) -> List[RoutedServer]:
        return self._table.servers

    # ---- tasks -----------------------------------------------------------
    def submit(self, func: Callable, resource_specification: Dict[str, Any], *args: Any, **kwargs: Any) -> Future:
        """Package ``func(*args, **kwargs)`` and queue it for the servers (sent at once where one has room)."""
        if self.bad_state_is_set:
            raise self.executor_exception
        if not self._started or self._stopping:
            raise DragonExecutorError("executor is not running (start() not called or shut down)", self)
        spec = normalize_spec(resource_specification, default_pmi=self.pmi)
        home = self._kept.home(args, kwargs)  # the block holding the task's kept inputs, if any
        args, kwargs = self._kept.localize(args, kwargs, home)
        payload = pack_apply_message(func, args, kwargs, buffer_threshold=NO_SERIALIZER_WARNING)
        too_large = p.payload_error(f"the packed task ({getattr(func, '__name__', 'app')} with its arguments)",
                                    len(payload), self.settings.max_payload_bytes)  # type: ignore[union-attr]
        if too_large:
            raise PayloadTooLarge(too_large, self)
        return self._table.submit(spec, payload, home)

    def _send(self, sends: List[Send]) -> None:
        for send in sends:
            self._client.send_task(  # type: ignore[union-attr]
                send.server_id, p.TaskEntry(send.task_id, send.spec), send.payload)
        if sends and self.on_placed is not None:
            self.on_placed([(send.task_id, self._table.block_of(send.server_id)) for send in sends])

    def _on_results(self, server_id: str, message: p.TaskResults) -> None:
        self._blocks.results_from(server_id)  # the first ones end the block's start-up timeline
        self._table.on_results(server_id, message)

    @property
    def kept_bytes_read(self) -> int:
        """Bytes of kept results this driver has read (fetched over the server links) so far."""
        return self._kept.bytes_read

    @property
    def link_bytes(self) -> int:
        """Bytes this driver has sent and received on its server links so far (TCP or Unix socket)."""
        return 0 if self._client is None else self._client.bytes_sent + self._client.bytes_received

    def startup_timeline(self, block_id: str = "0") -> Timeline:
        return self._blocks.timeline(block_id)  # when each start-up step happened, measured (host/startup.py)

    def outstanding(self) -> int:
        return len(self._tasks)

    def figures(self) -> Tuple[List[BlockFigures], int, int]:
        """Each connected block's server, workers and tasks; the tasks waiting for room; tasks submitted."""
        return self._table.figures()

    def _on_reconnected(self, server_id: str) -> None:
        """The link to a server came back: tell it which tasks we still wait for (``Sync``);
        those it does not hold come back failed (``TaskLost``)."""
        with self._lock:
            server = self._router.servers.get(server_id)
            if server is None:
                return
            self._client.send(server_id, p.Sync(task_ids=sorted(server.tasks)))  # type: ignore[union-attr]

    def _on_monitoring(self, message: p.Monitoring) -> None:
        if self.monitoring_messages is None:
            return
        for payload in message.payloads:
            self.monitoring_messages.put(pickle.loads(payload))

    def _on_server_lost(self, server_id: str, why: str) -> None:
        self._kept.lost(server_id, f"its block's server {server_id} was lost: {why}")
        server, lost = self._table.take_server(server_id)
        if server is None:
            return
        where = f"server {server_id} on {server.link.welcome.host} (block {server.block_id})"
        for future in lost:
            set_exception(future, ServerLost(f"{where} was lost: {why}; the task may be retried", self))
        if server.block_id is not None and not self._stopping:
            self._simulated_status[server.block_id] = JobStatus(JobState.FAILED, f"{where} lost: {why}")
            job_id = self.blocks_to_job_id.get(server.block_id)
            if job_id is not None:
                self._blocks.cancel_in_background(server.block_id, job_id)

    # ---- shutdown --------------------------------------------------------
    def _detach(self, server_id: str, message: p.Message) -> None:
        self._kept.lost(server_id, f"its block's server {server_id} was stopped ({getattr(message, 'reason', '')})")
        server, lost = self._table.take_server(server_id)
        if server is not None and self._client is not None:
            self._client.disconnect(server_id, message)
        for future in lost:
            set_exception(future, ServerLost(f"server {server_id} was stopped before the task finished", self))

    def shutdown(self) -> None:
        """Stop owned servers and their blocks, detach from shared ones. Safe twice and before start."""
        if self._stopping:
            return
        self._stopping = True
        if not self._started:
            return
        with self._lock:
            servers = self._servers
        for server in servers:
            self._detach(server.link.server_id, p.Shutdown(reason="executor shutdown") if server.link.owner
                         else p.Goodbye())
        job_ids = [j for b, j in self.blocks_to_job_id.items() if self._status.get(b) is None
                   or self._status[b].state not in TERMINAL_STATES or b in self._simulated_status]
        self._blocks.end_jobs(job_ids, STOP_WAIT_SECONDS)
        self._blocks.join(timeout=5)
        self._kept.close()
        self._client.close()  # type: ignore[union-attr]
        for future in self._table.clear():
            set_exception(future, DragonExecutorError("executor shut down before the task finished", self))
        logger.info("DragonExecutor %s shut down", self.label)
