"""Which Parsl launchers can start a block's Dragon runtime.

A block must run our boot command exactly once: Dragon itself spreads over the
block's nodes. Launchers that start one copy per node or per rank would start
several competing runtimes, so they are refused with a clear error.
"""
from __future__ import annotations

from typing import Optional

from parsl.launchers import (AprunLauncher, GnuParallelLauncher, JsrunLauncher, MpiExecLauncher,
                             MpiRunLauncher, SimpleLauncher, SrunLauncher, SrunMPILauncher)
from parsl.launchers.base import Launcher

from parsl_dragon.errors import ConfigurationError

PER_NODE_LAUNCHERS = (AprunLauncher, GnuParallelLauncher, JsrunLauncher, MpiExecLauncher,
                      MpiRunLauncher, SrunLauncher, SrunMPILauncher)


def default_launcher() -> Launcher:
    """The launcher used when none is given: run the command once, as is."""
    return SimpleLauncher()


def check_launcher(launcher: Optional[Launcher]) -> None:
    """Refuse launchers that would start more than one runtime per block."""
    if isinstance(launcher, PER_NODE_LAUNCHERS):
        raise ConfigurationError(
            f"{type(launcher).__name__} starts one copy of the block command per node or rank, but a "
            "DragonExecutor block needs exactly one Dragon runtime spanning its nodes: give the provider "
            "launcher=SimpleLauncher() (or parsl_dragon's DragonLauncher where available)")
