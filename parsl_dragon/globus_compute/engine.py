"""DragonEngine: a Globus Compute endpoint engine whose tasks run on DragonExecutor blocks.

The endpoint's interchange hands the engine packed tasks; the engine submits Globus Compute's
own ``execute_task`` with each one to a :class:`~parsl_dragon.DragonExecutor`, whose workers
unpack the function, run it and pack its ``Result``; the executor's future resolves to those
bytes. Serial functions and ``MPIFunction`` s share the blocks, placed by the server's slot table
from each task's resource specification (``num_nodes``, ``ranks_per_node``, ``gpus_per_rank``...)::

    interchange                          DragonEngine                     DragonExecutor
    start(endpoint_id, run_dir)     ->   executor.start(); Parsl's JobStatusPoller scales blocks
    submit(task_f, packed, spec)    ->   _submit: executor.submit(execute_task, spec, packed, ...)
    task_f.block_id / job_id        <-   on_placed: a block's server took the task (RUNNING)
    heartbeat: get_status_report()  <-   executor.figures(): blocks, workers, tasks (report.py)
    a system failure (WorkerLost, ServerLost, ...) resubmits up to max_retries_on_system_failure
    executor_exception              ->   the interchange stops on an unrecoverable block failure
    shutdown()                      ->   poller closed, servers and blocks stopped

``GlobusComputeEngine`` drives HTEX's internals (launch commands, ``submit_payload``, managers),
so this engine subclasses the base class instead and holds a DragonExecutor.
"""
from __future__ import annotations

import logging
import os
import threading
import uuid
from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Optional, Tuple

from globus_compute_common.messagepack.message_types import EPStatusReport
from globus_compute_endpoint.engines.base import GCExecutorFuture, GCFuture, GlobusComputeEngineBase
from parsl.jobs.job_status_poller import JobStatusPoller
from parsl.launchers import SimpleLauncher, SingleNodeLauncher

from parsl_dragon.driver.executor import DragonExecutor
from parsl_dragon.driver.launchers import DragonLauncher
from parsl_dragon.errors import ConfigurationError
from parsl_dragon.globus_compute.report import global_state

logger = logging.getLogger(__name__)

# GlobusComputeEngine settings a copied YAML may carry, and what to write instead.
HTEX_ONLY = {
    "max_workers_per_node": "workers_per_node",
    "max_workers": "workers_per_node",
    "cores_per_worker": "workers_per_node (a task's cores are its cpus_per_rank)",
    "encrypted": "nothing: the link to the blocks is always CURVE-encrypted (or a Unix socket on one host)",
    "container_type": "a container wrapper in the provider's launcher (DragonLauncher prepend) or worker_init",
    "worker_ports": "nothing: blocks publish their own address",
    "worker_port_range": "nothing: blocks publish their own address",
}
SHARED = "shared-server"  # the block id reported for tasks on a shared server (server_path), which has no block


class DragonEngine(GlobusComputeEngineBase):
    """Globus Compute engine over a :class:`~parsl_dragon.DragonExecutor`.

    Parameters
    ----------
    label : str
        Names the engine and its executor (``<label>``, in logs and the run directory).
    executor : DragonExecutor, optional
        A ready-made executor (Python configurations); otherwise one is built from the
        remaining keyword arguments, which are ``DragonExecutor``'s (``provider``,
        ``workers_per_node``, ``pmi``, ``available_accelerators``, ``transport``, the timeouts,
        ``address``...). In YAML, ``provider:`` (with its ``launcher:``) and ``address:`` are
        built by the endpoint from Parsl's classes by name.
    max_retries_on_system_failure : int
        Resubmissions of a task whose worker, server or block was lost (Globus Compute's meaning;
        a function that raises is not retried).
    working_dir, run_in_sandbox, allowed_serializers :
        As for every Globus Compute engine.
    strategy, job_status_kwargs :
        Parsl's scaling strategy and its ``JobStatusPoller`` settings (defaults as
        ``GlobusComputeEngine``'s: ``simple``, ``max_idletime`` 120 s, ``strategy_period`` 5 s).

    A provider whose launcher runs the command once (Parsl's ``SimpleLauncher``, or
    ``SingleNodeLauncher``, the default of Parsl's providers) gets :class:`DragonLauncher`, which
    does the same and also tells the block its size; the endpoint's YAML cannot name it, as it
    builds launchers from ``parsl.launchers`` only. Launchers that start one copy per node or rank
    are refused, as by the executor.
    """

    def __init__(self, *args: Any, label: str = "DragonEngine", executor: Optional[DragonExecutor] = None,
                 max_retries_on_system_failure: int = 0, working_dir: str = "tasks_working_dir",
                 allowed_serializers: Any = None, run_in_sandbox: bool = False, strategy: Optional[str] = None,
                 job_status_kwargs: Optional[Dict[str, Any]] = None, **executor_kwargs: Any) -> None:
        if args:
            raise ConfigurationError(f"DragonEngine takes keyword arguments only (got {len(args)} positional)")
        misnamed = sorted(set(executor_kwargs) & set(HTEX_ONLY))
        if misnamed:
            raise ConfigurationError("DragonEngine has no " + "; ".join(
                f"{name!r} (a GlobusComputeEngine setting): use {HTEX_ONLY[name]}" for name in misnamed))
        super().__init__(max_retries_on_system_failure=max_retries_on_system_failure, working_dir=working_dir,
                         allowed_serializers=allowed_serializers)
        self.label, self.run_in_sandbox, self.allowed_serializers = label, run_in_sandbox, allowed_serializers
        self.strategy, self.job_status_kwargs = strategy, job_status_kwargs  # as given (RepresentationMixin)
        if executor is None:
            executor = DragonExecutor(label=label, **_with_block_launcher(executor_kwargs))
        elif executor_kwargs:
            raise ConfigurationError(f"DragonEngine got an executor and executor settings "
                                     f"{sorted(executor_kwargs)}: give them to the executor")
        elif not isinstance(executor, DragonExecutor):
            raise ConfigurationError(f"DragonEngine's executor must be a DragonExecutor, not {type(executor).__name__}")
        self.executor = executor
        self._job_status_kwargs: Dict[str, Any] = {"strategy": strategy or "simple", "max_idletime": 120.0,
                                                   "strategy_period": 5.0, **(job_status_kwargs or {})}
        self.job_status_poller: Optional[JobStatusPoller] = None
        self._placed_lock = threading.Lock()
        self._placed_in: Dict[int, str] = {}  # executor task id -> block, until its future is done

    # ---- lifecycle -------------------------------------------------------
    def start(self, *args: Any, endpoint_id: Optional[uuid.UUID] = None, run_dir: Optional[str] = None,
              monitored: bool = False, **kwargs: Any) -> None:
        """Start the executor (its ``init_blocks``) and the scaling poller in ``run_dir``; the interchange
        calls this once. ``monitored`` (high-assurance audit) needs nothing more: placements are reported
        as tasks reach a block."""
        if endpoint_id is None or run_dir is None:
            raise ConfigurationError("DragonEngine.start needs endpoint_id and run_dir (the endpoint passes both)")
        self.endpoint_id, self.run_dir = endpoint_id, os.path.abspath(run_dir)
        self.set_working_dir(run_dir=self.run_dir)
        self.executor.run_dir = self.run_dir
        provider = self.executor.provider
        if provider is not None and hasattr(provider, "script_dir"):
            provider.script_dir = os.path.join(self.run_dir, "submit_scripts")
            os.makedirs(provider.script_dir, exist_ok=True)
        self.executor.on_placed = self._on_placed
        try:
            self.executor.start()
            self.job_status_poller = JobStatusPoller(**self._job_status_kwargs)
            self.job_status_poller.add_executors([self.executor])
        except BaseException:
            self.shutdown()  # no half-started blocks behind a failed start
            raise
        self._engine_ready = True
        logger.info("DragonEngine %s started for endpoint %s in %s (tasks in %s)", self.label, endpoint_id,
                    self.run_dir, self.working_dir)

    def shutdown(self, /, block: bool = False, **kwargs: Any) -> None:
        """Stop scaling, then the executor's servers and blocks. Safe twice."""
        self._engine_ready = False
        if self.job_status_poller is not None:
            self.job_status_poller.close()
            self.job_status_poller = None
        self.executor.shutdown()

    @property
    def executor_exception(self) -> Optional[BaseException]:
        """Set when the executor cannot go on (e.g. every block fails to start): the interchange stops."""
        return self.executor.executor_exception if self.executor.bad_state_is_set else None

    def assert_ha_compliant(self) -> None:
        """High assurance needs encrypted or same-host traffic. The endpoint's link to a block's server
        is CURVE over TCP (a Unix socket in a 0700 directory on one host), and so are the workers'
        links; but Dragon's own transport between a block's nodes (HSTA or TCP) is not encrypted, and it
        carries rank launches (their command lines and environment) and kept results. So only blocks
        of one node comply."""
        nodes = self.block_nodes
        if nodes > 1:
            raise ValueError(
                f"DragonEngine blocks span {nodes} nodes, and Dragon's transport between a block's nodes (HSTA or "
                "TCP) is not encrypted: it carries rank launches and kept results. High-assurance endpoints need "
                "blocks of one node (the provider's nodes_per_block: 1); the links to and within a block are "
                "CURVE-encrypted or Unix sockets on one host")

    @property
    def block_nodes(self) -> int:
        """Nodes a block spans: the driver's job span inside an allocation, else the provider's blocks."""
        if self.executor.allocation is not None:
            return self.executor.allocation.span
        return int(getattr(self.executor.provider, "nodes_per_block", 1) or 1)

    # ---- tasks -----------------------------------------------------------
    def _submit(self, resource_specification: Dict[str, Any], func: Callable, packed_task: bytes,
                args: Tuple[Any, ...] = (), kwargs: Optional[Dict[str, Any]] = None) -> GCExecutorFuture:
        future: Future = self.executor.submit(func, dict(resource_specification or {}), packed_task, *args,
                                              **(kwargs or {}))
        task_id = future.parsl_executor_task_id  # type: ignore[attr-defined]
        future.executor_task_id = task_id  # type: ignore[attr-defined]
        future.add_done_callback(lambda _: self._forget(task_id))
        return future  # type: ignore[return-value]

    def _on_placed(self, placed: List[Tuple[int, Optional[str]]]) -> None:
        """Tasks reached a block's server: report them running there (Globus Compute's RUNNING).
        A task placed before the base class has mapped its id is reported when it does
        (:meth:`_update_executor_task_id`)."""
        by_block: Dict[str, List[int]] = {}
        with self._placed_lock:
            for task_id, block_id in placed:
                self._placed_in[task_id] = SHARED if block_id is None else block_id
                by_block.setdefault(self._placed_in[task_id], []).append(task_id)
        for block_id, task_ids in by_block.items():
            self.set_tasks_placement(task_ids, block_id=block_id, job_id=self._job_of(block_id))

    def _update_executor_task_id(self, gcf: GCFuture, new_val: Any) -> None:
        super()._update_executor_task_id(gcf, new_val)
        with self._placed_lock:
            block_id = self._placed_in.get(new_val)
        if block_id is not None:
            self.set_tasks_placement([new_val], block_id=block_id, job_id=self._job_of(block_id))

    def _forget(self, task_id: int) -> None:
        with self._placed_lock:
            self._placed_in.pop(task_id, None)

    def _job_of(self, block_id: str) -> Any:
        return self.executor.blocks_to_job_id.get(block_id)

    # ---- status ----------------------------------------------------------
    def get_status_report(self) -> EPStatusReport:
        """The endpoint's heartbeat: blocks, nodes, workers and tasks, measured (report.py)."""
        state = global_state(self.executor, self.block_nodes)
        state["engine_type"] = type(self).__name__
        return EPStatusReport(endpoint_id=self.endpoint_id, global_state=state, task_statuses={})

    @property
    def provider(self) -> Any:
        return self.executor.provider

    @property
    def max_workers_per_node(self) -> Any:
        return self.executor.workers_per_node


def _with_block_launcher(settings: Dict[str, Any]) -> Dict[str, Any]:
    """A provider whose launcher runs the block command once gets DragonLauncher, which does the same
    and exports the block's size; the YAML cannot name DragonLauncher (launchers come from parsl.launchers)."""
    provider = settings.get("provider")
    launcher = getattr(provider, "launcher", None)
    if type(launcher) in (SimpleLauncher, SingleNodeLauncher):
        logger.info("DragonEngine: the provider's %s becomes DragonLauncher (one Dragon runtime per block)",
                    type(launcher).__name__)
        provider.launcher = DragonLauncher(debug=launcher.debug)  # type: ignore[union-attr]
    return settings
