"""Which Parsl launchers can start a block's Dragon runtime, and the one made for it.

A block must run our boot command exactly once: Dragon itself spreads over the
block's nodes (``dragon -w slurm`` / ``-w pbs+pals`` start its backend on every
node of the allocation). :class:`DragonLauncher` does that for any provider.
Launchers that start one copy per node or per rank would start several competing
runtimes, so they are refused with a clear error::

    provider (sbatch / qsub / local)            DragonLauncher output, run once per block
      job script on the first node  ------->    exec python -m parsl_dragon.server.boot ...
                                                  dragon [-s | -w slurm | -w pbs+pals]
                                                    server + workers on every node
"""
from __future__ import annotations

import logging
from typing import Optional

import typeguard
from parsl.launchers import (
    AprunLauncher,
    GnuParallelLauncher,
    JsrunLauncher,
    MpiExecLauncher,
    MpiRunLauncher,
    SingleNodeLauncher,
    SrunLauncher,
    SrunMPILauncher,
)
from parsl.launchers.base import Launcher

from parsl_dragon.errors import ConfigurationError
from parsl_dragon.vocabulary import ENV_NODES_PER_BLOCK

logger = logging.getLogger(__name__)

PER_NODE_LAUNCHERS = (AprunLauncher, GnuParallelLauncher, JsrunLauncher, MpiExecLauncher,
                      MpiRunLauncher, SrunLauncher, SrunMPILauncher)


class DragonLauncher(Launcher):
    """Run the block command once for the whole block; Dragon spans the block's nodes itself.

    The command is ``exec``-ed, so the batch system's signals (``scancel``, ``qdel``,
    walltime) reach the boot process directly and its exit code is the job's.

    Parameters
    ----------
    debug : bool
        Echo a line naming the block's size and first node to the job's stdout.
    prepend : str
        Shell words put before the command, e.g. ``"env FOO=1"`` or a container
        wrapper (``"apptainer exec image.sif"``); must keep running it in the foreground.
    """

    @typeguard.typechecked
    def __init__(self, debug: bool = True, prepend: str = "") -> None:
        super().__init__(debug=debug)
        self.prepend = prepend

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int, script_dir: str = "") -> str:
        if tasks_per_node != 1:
            logger.warning("DragonLauncher starts one Dragon runtime per block; tasks_per_node=%d is "
                           "ignored (the server sizes its workers itself)", tasks_per_node)
        lines = [f"# parsl-dragon DragonLauncher: one Dragon runtime for the whole block "
                 f"({nodes_per_block} node{'s' if nodes_per_block != 1 else ''}), started once, here",
                 f"export {ENV_NODES_PER_BLOCK}={int(nodes_per_block)}"]
        if self.debug:
            lines.append(f'echo "parsl-dragon: block of {nodes_per_block} node(s): starting the Dragon '
                         'runtime on $(hostname) at $(date)"')
        prefix = f"{self.prepend.strip()} " if self.prepend.strip() else ""
        lines.append(f"exec {prefix}{command}")
        return "\n".join(lines) + "\n"


def default_launcher() -> Launcher:
    """The launcher used when none is given: run the command once per block."""
    return DragonLauncher()


def check_launcher(launcher: Optional[Launcher], nodes_per_block: Optional[int] = None) -> None:
    """Refuse launchers that would start more than one runtime per block.

    ``nodes_per_block`` (when known) also refuses Parsl's ``SingleNodeLauncher`` — the
    default launcher of Parsl's Slurm and PBS providers — for multi-node blocks, where
    it would start one copy per node on the first node."""
    if isinstance(launcher, PER_NODE_LAUNCHERS):
        raise ConfigurationError(
            f"{type(launcher).__name__} starts one copy of the block command per node or rank, but a "
            "DragonExecutor block needs exactly one Dragon runtime spanning its nodes: give the provider "
            "launcher=parsl_dragon.driver.launchers.DragonLauncher() (or SimpleLauncher() for one-node blocks)")
    if isinstance(launcher, SingleNodeLauncher) and nodes_per_block is not None and nodes_per_block > 1:
        raise ConfigurationError(
            f"SingleNodeLauncher (the default launcher of Parsl's cluster providers) would start "
            f"{nodes_per_block} copies of the block command for nodes_per_block={nodes_per_block}, i.e. "
            "competing Dragon runtimes: give the provider launcher=parsl_dragon.driver.launchers.DragonLauncher()")
