"""parsl-dragon: a Parsl executor whose blocks run the Dragon HPC runtime.

>>> import parsl
>>> from parsl_dragon import DragonExecutor
>>> parsl.load(parsl.Config(executors=[DragonExecutor()]))  # doctest: +SKIP

The public names below are imported on first use (PEP 562), not with the package: every
process of a block (boot, server, workers, ``$PARSL_MPI_PREFIX``) imports a module under
``parsl_dragon`` and so runs this file, and only the driver needs the executor, which pulls
in all of Parsl (~0.2-0.8 s on a small node, on the critical path of a block's start-up).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: Dict[str, str] = {
    "DragonExecutor": "parsl_dragon.driver.executor",
    "DragonLauncher": "parsl_dragon.driver.launchers",
    "DragonRadio": "parsl_dragon.task.monitoring",
    **{name: "parsl_dragon.errors" for name in (
        "DragonExecutorError", "ConfigurationError", "InsecureKeyPath", "ServerStartupError", "ServerCapacityError",
        "ServerConnectionError", "AuthenticationFailed", "HandshakeTimeout", "VersionMismatch", "ServerLost",
        "WorkerLost", "TaskLost", "PayloadTooLarge", "InsecurePath", "ProtocolError", "RankFailure", "ResultLost")},
    "is_kept": "parsl_dragon.task.kept",
}

__all__: List[str] = list(_EXPORTS)

if TYPE_CHECKING:  # what static checkers see; at run time __getattr__ below imports on first use
    from parsl_dragon.driver.executor import DragonExecutor  # noqa: F401
    from parsl_dragon.driver.launchers import DragonLauncher  # noqa: F401
    from parsl_dragon.errors import (  # noqa: F401
        AuthenticationFailed,
        ConfigurationError,
        DragonExecutorError,
        HandshakeTimeout,
        InsecureKeyPath,
        InsecurePath,
        PayloadTooLarge,
        ProtocolError,
        RankFailure,
        ResultLost,
        ServerCapacityError,
        ServerConnectionError,
        ServerLost,
        ServerStartupError,
        TaskLost,
        VersionMismatch,
        WorkerLost,
    )
    from parsl_dragon.task.kept import is_kept  # noqa: F401
    from parsl_dragon.task.monitoring import DragonRadio  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:  # also how ``from parsl_dragon import cli`` falls through to the submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
