"""The only module that imports ``dragon``: node discovery, worker processes, rank launches.

Workers are persistent Python processes, each its own Dragon ``Process`` (a few ms to start;
a ``ProcessGroup`` would first start a Python manager, ~0.6 s of every block's start-up).
The server polls :meth:`DragonBackend.dead_workers` from its single thread: one Global
Services ``multi_join`` with timeout 0 over every live worker says which have exited, and
each is replaced by a new worker on the same node (until :meth:`DragonBackend.stop`).

Ranks of an MPI task (:func:`run_ranks`, one call per launch, in the launch's own thread):
``pmi="none"`` starts one Dragon ``Process`` per rank (a few ms each), ``cray``/``pmix`` one
``ProcessGroup`` (its PMI wire-up needs the group's manager; ~0.5 s). Either way the thread
then waits with Global Services ``multi_join`` on the ranks' puids, which answers the moment
the last rank exits. ``pmi="mpiexec"`` ranks are started by the task's own ``mpiexec``
(``$PARSL_MPI_PREFIX``), never here.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from parsl_dragon.core.accelerators import gpu_environment, per_rank
from parsl_dragon.server import pmi

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    hostname: str
    cpus: int
    gpus: int


@dataclass
class RankJob:
    """One launch of an MPI task's ranks: what to run and where (from the task's placement)."""

    task_id: int
    argv: List[str]
    cwd: str
    env: Dict[str, str]
    hosts: List[str]
    ranks_per_node: int
    pmi: str = "none"
    cores: List[List[int]] = field(default_factory=list)  # per host: core ids, cpus_per_rank per rank
    gpus: List[List[str]] = field(default_factory=list)   # per host: device ids, gpus_per_rank per rank
    cpus_per_rank: int = 1
    gpus_per_rank: int = 0
    cpu_bind: bool = False
    launcher_options: str = ""
    walltime: Optional[float] = None
    output_dir: str = "."


@dataclass
class RankOutcome:
    """Exit code per rank (``labels`` name them); ``error`` if nothing could be launched."""

    exit_codes: List[int]
    labels: List[str]
    error: str = ""


def _import_dragon():
    try:
        from dragon.infrastructure.policy import Policy
        from dragon.native.machine import Node, System
        from dragon.native.process import ProcessTemplate
        from dragon.native.process_group import ProcessGroup
    except ImportError as exc:  # pragma: no cover - the server only runs inside dragon
        raise RuntimeError("the Dragon server needs the 'dragonhpc' package (pip install dragonhpc)") from exc
    return Policy, Node, System, ProcessTemplate, ProcessGroup


def _import_process_api():
    """Dragon's single-process API and the Global Services calls workers and rank launches use."""
    from dragon.globalservices.process import kill, multi_join
    from dragon.infrastructure.messages import GSProcessJoinListResponse
    from dragon.native.process import Process
    return Process, multi_join, kill, GSProcessJoinListResponse.Errors


WALLTIME_EXIT = -2  # Dragon's code for a process stopped at its walltime
MPIEXEC_REFUSED = "ranks of pmi='mpiexec' tasks are started by mpiexec itself, not by the server"
JOIN_SLICE = 0.5      # seconds one multi_join may block: how late a cancel or a walltime is seen
KILL_PATIENCE = 5.0   # seconds to wait for killed ranks to be gone
START_THREADS = 8     # worker starts in flight at once (each waits ~7-12 ms for Global Services)


def default_workers(cpus: int) -> int:
    """Leave one core to Dragon's busy-polling infrastructure: max(1, cpus - 1)."""
    return max(1, cpus - 1)


class DragonBackend:
    """Starts, watches, replaces and stops the worker processes of one server.

    Not thread-safe: every method but :meth:`run_ranks` belongs to the server's thread."""

    def __init__(self, workers_per_node: Optional[int] = None) -> None:
        self.workers_per_node = workers_per_node
        self._dragon = _import_dragon()
        self._nodes: List[NodeInfo] = []
        self._expected = 0
        self._launch: Optional[Tuple[Dict[str, str], str]] = None  # (environment, cwd) of every worker
        self._live: Dict[int, str] = {}  # puid -> node of each worker not yet seen exited
        self._owed: List[str] = []       # nodes owed a replacement that could not be started yet
        self._stopping = False

    def nodes(self) -> List[NodeInfo]:
        if not self._nodes:
            _, Node, System, _, _ = self._dragon
            for h_uid in System().nodes:
                node = Node(h_uid)
                self._nodes.append(NodeInfo(node.hostname, node.num_cpus, node.num_gpus))
        return self._nodes

    def hostnames(self) -> List[str]:
        return [n.hostname for n in self.nodes()]

    def expected_workers(self) -> int:
        return self._expected

    def start_workers(self, address: str, env: Dict[str, str], cwd: str) -> int:
        """Start ``workers_per_node`` workers per node (default cpus - 1); how many in all.
        ``address`` is in ``env`` already: it is named for the log only."""
        self._launch = (dict(os.environ, **env), cwd)
        hosts = [node.hostname for node in self.nodes()
                 for _ in range(self.workers_per_node or default_workers(node.cpus))]
        self._start_many(hosts)
        self._expected += len(hosts)
        logger.debug("Started %d worker processes for %s", self._expected, address)
        return self._expected

    def _start_many(self, hosts: List[str]) -> None:
        """A worker on each of ``hosts``, :data:`START_THREADS` starts in flight at once (each is
        one Global Services request, answered once the node has started the process). Raises the
        first failure, once every worker that did start is watched (so that stop() stops it)."""
        with ThreadPoolExecutor(max_workers=max(1, min(START_THREADS, len(hosts)))) as pool:
            starts = [(host, pool.submit(self._spawn, host)) for host in hosts]
        failures = []
        for host, start in starts:
            try:
                self._live[start.result()] = host
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    def _spawn(self, host: str) -> int:
        """Start one worker on ``host`` as its own Dragon Process; its puid (thread-safe)."""
        Policy = self._dragon[0]
        Process = _import_process_api()[0]
        env, cwd = self._launch  # type: ignore[misc]
        process = Process(target=sys.executable, args=["-m", "parsl_dragon.server.worker", host], cwd=cwd,
                          env=env, policy=Policy(placement=Policy.Placement.HOST_NAME, host_name=host))
        process.start()
        return process.puid

    def run_ranks(self, job: RankJob, on_started: Optional[Callable[[], None]] = None,
                  cancel: Optional[threading.Event] = None) -> RankOutcome:
        """Launch and wait for an MPI task's ranks (called from a per-launch thread)."""
        return run_ranks(job, on_started, cancel)

    def dead_workers(self, replace: Callable[[], bool] = lambda: True) -> List[Tuple[int, int]]:
        """(puid, exit code) of the workers that exited since the last call; each is replaced by a
        new worker on its node, unless :meth:`stop` began or ``replace()`` says no (asked after the
        request, which may be when a teardown's signals arrive). One Global Services request."""
        dead = _exited(list(self._live)) if self._live else []
        owed, self._owed = self._owed, []
        for puid, _ in dead:
            owed.append(self._live.pop(puid))
        if not self._stopping and replace():
            for host in owed:
                self._replace(host)
        return dead

    def _replace(self, host: str) -> None:
        """Start a worker in place of one that exited; if that fails, try again at the next poll."""
        try:
            self._live[self._spawn(host)] = host
        except Exception as exc:  # dragon raises several unrelated types here
            logger.warning("Could not start a replacement worker on %s (trying again): %r", host, exc)
            self._owed.append(host)

    def stop(self, patience: float = 2.0) -> None:
        """Replace no more workers; give them ``patience`` s to exit (the server has told them to),
        then SIGTERM, another ``patience`` s, and SIGKILL what is left; return once all are gone."""
        self._stopping = True
        live, self._live = list(self._live), {}
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                logger.info("%d worker(s) still running: sending %s", len(live), signal.Signals(sig).name)
                _signal(live, sig)
            try:
                live = _still_running(live, KILL_PATIENCE if sig == signal.SIGKILL else patience)
            except Exception as exc:
                logger.warning("Could not wait for the workers to exit: %s", exc)
            if not live:
                return
        logger.warning("Worker processes %s did not exit after SIGKILL", live)


def _exited(puids: List[int]) -> List[Tuple[int, int]]:
    """(puid, exit code) of those of ``puids`` that have exited, without waiting: one Global
    Services ``multi_join`` with timeout 0 (it answers at once for live processes)."""
    _, multi_join, _, Errors = _import_process_api()
    try:
        _, status = multi_join(puids, timeout=0, join_all=False)
    except Exception as exc:  # dragon raises several unrelated types here
        logger.warning("Could not ask Global Services which workers exited: %s", exc)
        return []
    return [(int(puid), code) for puid, (err, code) in (status or {}).items() if err == Errors.SUCCESS.value]


def _still_running(puids: List[int], patience: float) -> List[int]:
    """Those of ``puids`` that do not exit within ``patience`` s (returns when all have)."""
    if not puids:
        return []
    codes = _join_some(puids, patience)
    return [puid for puid in puids if puid not in codes]


def _signal(puids: List[int], sig: int) -> None:
    """Send ``sig`` to these processes (one that already exited is skipped)."""
    kill = _import_process_api()[2]
    for puid in puids:
        try:
            kill(puid, sig=sig)
        except Exception as exc:  # already exited: nothing to signal
            logger.debug("Signalling process %d: %s", puid, exc)


def run_ranks(job: RankJob, on_started: Optional[Callable[[], None]] = None,
              cancel: Optional[threading.Event] = None) -> RankOutcome:
    """Start the job's ranks through Dragon and wait for them; call from a dedicated thread.

    ``on_started`` is called once every rank has started (the start-up guard of
    ``server/ranks.py`` watches for it). Setting ``cancel`` stops the ranks still running
    within :data:`JOIN_SLICE` seconds; the outcome is then of no use to anyone. A backend
    that cannot work here, and ``mpiexec`` (its ranks are not the server's to start), fail
    at once, before anything starts.
    """
    if job.pmi == "mpiexec":
        return RankOutcome([], [], error=MPIEXEC_REFUSED)
    why = pmi.problem(job.pmi, job.env)
    if why:
        return RankOutcome([], [], error=why)
    os.makedirs(job.output_dir, exist_ok=True)
    started = on_started or (lambda: None)
    cancel = cancel or threading.Event()
    return (_run_processes if job.pmi == "none" else _run_group)(job, started, cancel)


def _rank_policy(Policy, job: RankJob, host_index: int, local_rank: int):
    kwargs = {"placement": Policy.Placement.HOST_NAME, "host_name": job.hosts[host_index]}
    if job.cpu_bind and host_index < len(job.cores) and job.cores[host_index]:
        per = job.cpus_per_rank
        kwargs["cpu_affinity"] = job.cores[host_index][local_rank * per:(local_rank + 1) * per]
    return Policy(**kwargs)


# Each rank writes its own rank-N.out/.err: /bin/sh opens them, then execs the command (the rank
# is the command itself, as far as Dragon and its exit code go). Not Dragon's stdout=<file>:
# Dragon 0.15 then pipes the output through Local Services, whose death watcher blocks reading
# that pipe after a rank is killed while a child of the rank still holds it, which stalls every
# exit report on that node until the child ends.
_REDIRECT = 'out=$1 err=$2; shift 2; exec "$@" >>"$out" 2>>"$err"'


def _rank_templates(job: RankJob, make) -> List[object]:
    """One ``make(...)`` per rank, in rank order: placement, rank variables, output files in
    ``job.output_dir``. ``make`` is ``Process`` or ``ProcessTemplate`` (same arguments).
    A command that cannot be found fails its ranks with 127 and says so in ``rank-N.err``."""
    Policy = _import_dragon()[0]
    output_dir = os.path.abspath(job.output_dir)
    made = []
    for host_index in range(len(job.hosts)):
        for local_rank in range(job.ranks_per_node):
            rank = len(made)
            env = dict(job.env, PARSL_RANK=str(rank), PARSL_LOCAL_RANK=str(local_rank),
                       PARSL_NODE_RANK=str(host_index))
            if job.gpus_per_rank and host_index < len(job.gpus):  # not Dragon's gpu_affinity: ids may be tiles
                env.update(gpu_environment(per_rank(job.gpus[host_index], job.gpus_per_rank, local_rank)))
            files = [os.path.join(output_dir, f"rank-{rank}.{kind}") for kind in ("out", "err")]
            made.append(make(target="/bin/sh", args=["-c", _REDIRECT, "rank", *files, *job.argv], cwd=job.cwd,
                             env=env, stdout=make.DEVNULL, stderr=make.DEVNULL,
                             policy=_rank_policy(Policy, job, host_index, local_rank)))
    return made


def _labels(count: int) -> List[str]:
    return [f"rank {rank}" for rank in range(count)]


def _start_rank(process) -> int:
    """Start one rank's Process; its puid."""
    process.start()
    return process.puid


def _run_processes(job: RankJob, started: Callable[[], None], cancel: threading.Event) -> RankOutcome:
    """``pmi="none"``: one Dragon Process per rank, no manager process, no wire-up."""
    Process = _import_process_api()[0]
    processes = _rank_templates(job, Process)
    puids: List[int] = []
    try:
        for process in processes:
            puids.append(_start_rank(process))
    except Exception as exc:
        logger.warning("Rank %d of task %d could not be started: %r", len(puids), job.task_id, exc)
        _kill(puids)
        return RankOutcome([], [], error=f"rank {len(puids)} could not be started ({exc!r}); "
                                         f"the {len(puids)} rank(s) already started were stopped")
    try:
        started()
        codes = _wait_for_ranks(puids, job, cancel)
    except BaseException:
        _kill(puids)  # never leave a rank running behind a failed wait
        raise
    return RankOutcome([codes[puid] for puid in puids], _labels(len(puids)))


def _run_group(job: RankJob, started: Callable[[], None], cancel: threading.Event) -> RankOutcome:
    """``cray``/``pmix``: one ProcessGroup (its manager does the PMI wire-up), waited on through
    Global Services like single processes. Never ``group.join(timeout)``: in dragonhpc 0.15 a
    join that times out leaves a stale reply that breaks the group's next request."""
    _, _, _, ProcessTemplate, ProcessGroup = _import_dragon()
    group = ProcessGroup(restart=False, ignore_error_on_exit=True, pmi=None if job.pmi == "none" else job.pmi)
    templates = _rank_templates(job, ProcessTemplate)
    for template in templates:
        group.add_process(nproc=1, template=template)
    group.init()
    try:
        group.start()
        started()
        puids, exited = _group_members(group, len(templates))
        codes = _wait_for_ranks(puids, job, cancel, exited, stop=lambda _: group.stop(patience=1.0))
    finally:
        _close_quietly(group)
    return RankOutcome([codes[puid] for puid in puids], _labels(len(puids)))


def _group_members(group, count: int) -> Tuple[List[int], Dict[int, int]]:
    """The started group's puids in rank order, and the exit codes of those already gone.

    The group's manager moves members to ``inactive_puids`` only once all have exited, so
    asking for the live ones first, then the exited ones, misses none."""
    live = list(group.puids or [])
    exited = {} if len(live) == count else dict(group.inactive_puids or [])
    puids = sorted(set(live) | set(exited))
    if len(puids) != count:
        raise RuntimeError(f"the rank group reports {len(puids)} of its {count} ranks")
    return puids, exited


def _close_quietly(group) -> None:
    """Close a finished rank group. On multi-node runtimes dragonhpc 0.15's close() can raise
    "ProcessGroup manager is not in state State.DEAD" after every rank has exited; the exit
    codes are already collected then, so that is logged, not turned into a failed launch."""
    try:
        group.close(patience=10.0)
    except Exception as exc:
        logger.warning("Closing a finished rank group failed (ranks are done): %s", exc)


def _wait_for_ranks(puids: List[int], job: RankJob, cancel: threading.Event,
                    exited: Optional[Dict[int, int]] = None,
                    stop: Optional[Callable[[List[int]], None]] = None) -> Dict[int, int]:
    """Exit code per puid once every rank has exited, the walltime has passed or ``cancel`` is set.

    Event-driven: each Global Services ``multi_join`` returns when the last rank exits, or
    after at most :data:`JOIN_SLICE` s, to look at the walltime and ``cancel``. Ranks still
    running at the walltime are stopped (``stop``, default: killed) and get ``WALLTIME_EXIT``;
    on ``cancel`` they are stopped and get ``-9``."""
    codes = dict(exited or {})
    deadline = None if job.walltime is None else time.monotonic() + job.walltime
    while True:
        running = [puid for puid in puids if puid not in codes]
        if not running:
            return codes
        left = None if deadline is None else deadline - time.monotonic()
        if cancel.is_set() or (left is not None and left <= 0):
            break
        codes.update(_join_some(running, JOIN_SLICE if left is None else min(JOIN_SLICE, left)))
    if cancel.is_set():
        logger.info("Stopping %d rank(s) of task %d: its launch was cancelled", len(running), job.task_id)
    else:
        logger.warning("Ranks of task %d exceeded their walltime of %.1fs: stopping %d", job.task_id,
                       job.walltime, len(running))
    (stop or _kill)(running)
    code = -9 if cancel.is_set() else WALLTIME_EXIT
    codes.update({puid: code for puid in running})
    return codes


def _join_some(puids: List[int], timeout: float) -> Dict[int, int]:
    """Exit codes of those of ``puids`` that exit within ``timeout`` s (returns when all have)."""
    _, multi_join, _, Errors = _import_process_api()
    _, status = multi_join(puids, timeout=max(timeout, 0.001), join_all=True)
    codes = {}
    for puid, (err, code) in (status or {}).items():
        if err == Errors.SUCCESS.value:
            codes[int(puid)] = code
        elif err not in (Errors.TIMEOUT.value, Errors.PENDING.value):
            raise RuntimeError(f"Global Services cannot join rank process {puid}: {code}")
    return codes


def _kill(puids: List[int]) -> None:
    """SIGKILL these rank processes and wait (bounded) until they are gone."""
    if not puids:
        return
    _, multi_join, kill, _ = _import_process_api()
    for puid in puids:
        try:
            kill(puid, sig=signal.SIGKILL)
        except Exception as exc:  # already exited: nothing to kill
            logger.debug("Killing rank process %d: %s", puid, exc)
    try:
        multi_join(puids, timeout=KILL_PATIENCE, join_all=True)
    except Exception as exc:
        logger.warning("Could not confirm that rank processes %s are gone: %s", puids, exc)
