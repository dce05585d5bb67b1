"""The batch allocation this process runs in (driver or boot), and whether a block may span it.

A user who runs ``sbatch workflow.sh`` (or works in ``salloc``, or in a PBS job) already holds
the nodes; ``DragonExecutor(in_allocation=True)`` (or the default ``None``, which means "if
there is one") boots one Dragon runtime over that job instead of asking a provider for more.
This module reads what the batch system tells the batch script:

=================  ==========================================  ===============================
scheduler          the job                                     its nodes
=================  ==========================================  ===============================
Slurm              ``SLURM_JOB_ID``                            ``SLURM_JOB_NUM_NODES`` (or
                                                               ``SLURM_NNODES``)
PBS Pro            ``PBS_JOBID``                               distinct hosts of
                                                               ``PBS_NODEFILE``
=================  ==========================================  ===============================

Inside a Slurm *job step* (``srun python pipeline.py``: ``SLURM_STEP_ID`` is set) the step holds
the job's resources, and the ``srun`` that Dragon runs to start itself on the other nodes waits
for them forever; a multi-node block is refused there at once (:func:`check_can_span`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

from parsl_dragon.vocabulary import errors

SLURM, PBS = "slurm", "pbs"


@dataclass(frozen=True)
class Allocation:
    """A batch job the current process runs in."""

    scheduler: str              # SLURM or PBS
    job_id: str
    nodes: int                  # nodes of the job
    step: Optional[str] = None  # Slurm job step id, when inside one (srun)
    span: int = 0               # nodes a block spans (all of them unless allocation_nodes says less)

    def __post_init__(self) -> None:
        if not self.span:
            object.__setattr__(self, "span", self.nodes)

    def describe(self) -> str:
        return f"{self.scheduler} job {self.job_id} ({self.nodes} node{'s' if self.nodes != 1 else ''})"


def pbs_hosts(nodefile: str) -> List[str]:
    """The distinct hosts of a PBS node file (one line per slot), in order."""
    with open(nodefile) as handle:
        return list(dict.fromkeys(line.strip() for line in handle if line.strip()))


def current_allocation(env: Optional[Mapping[str, str]] = None) -> Optional[Allocation]:
    """The job this process runs in (from the environment the batch system set), or None."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID"):
        count = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or "1"
        if not count.isdigit() or int(count) < 1:
            raise errors().ConfigurationError(f"SLURM_JOB_NUM_NODES must be a positive integer, got {count!r}")
        return Allocation(SLURM, env["SLURM_JOB_ID"], int(count), env.get("SLURM_STEP_ID") or None)
    nodefile = env.get("PBS_NODEFILE")
    if env.get("PBS_JOBID") and nodefile and os.path.exists(nodefile):  # a job without one is no allocation
        return Allocation(PBS, env["PBS_JOBID"], max(1, len(pbs_hosts(nodefile))))
    return None


def block_nodes(allocation: Allocation, wanted: Optional[int]) -> int:
    """How many of the job's nodes a block spans: ``wanted`` (checked), else all of them."""
    if wanted is None:
        return allocation.nodes
    if wanted < 1 or wanted > allocation.nodes:
        raise errors().ConfigurationError(f"allocation_nodes={wanted}, but {allocation.describe()} has "
                                          f"{allocation.nodes}: give 1 to {allocation.nodes}, or leave it unset "
                                          "for all")
    return wanted


def check_can_span(allocation: Allocation, nodes: int) -> None:
    """Refuse a multi-node block that cannot start from here (a Slurm job step), saying why and
    what to run instead."""
    if nodes > 1 and allocation.scheduler == SLURM and allocation.step is not None:
        raise errors().ConfigurationError(
            f"this driver runs inside step {allocation.step} of {allocation.describe()} (SLURM_STEP_ID is set: "
            "started with srun): the step holds the job's resources, so the srun with which Dragon starts "
            "itself on the other nodes would wait forever. Run the driver in the batch script itself "
            "(`python pipeline.py`, not `srun python pipeline.py`), or in the shell salloc gives you; or use "
            "allocation_nodes=1 for a block on this node only")


def job_to_span(provider: Any, in_allocation: Optional[bool], allocation_nodes: Optional[int],
                env: Optional[Mapping[str, str]] = None) -> Optional[Allocation]:
    """The job a ``DragonExecutor`` block spans (``span`` set), or None for a provider's blocks or
    a block on this node; refuses combinations that cannot mean anything."""
    if provider is not None:
        if in_allocation:
            raise errors().ConfigurationError("in_allocation=True runs the block in the driver's own job; a provider "
                                              "asks the batch system for new jobs: give one or the other")
        job = None
    else:
        job = None if in_allocation is False else current_allocation(env)
        if job is None and in_allocation:
            raise errors().ConfigurationError("in_allocation=True, but this process runs in no batch job (neither "
                                              "SLURM_JOB_ID nor PBS_JOBID is set): run the driver inside sbatch/salloc "
                                              "or a PBS job, or give a provider")
    if job is None:
        if allocation_nodes is not None:
            raise errors().ConfigurationError("allocation_nodes needs a block in the driver's job (in_allocation); "
                                              "with a provider, set the provider's nodes_per_block")
        return None
    span = block_nodes(job, allocation_nodes)
    check_can_span(job, span)
    return dataclasses.replace(job, span=span)
