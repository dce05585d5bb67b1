"""parsl-dragon: a Parsl executor whose blocks run the Dragon HPC runtime.

>>> import parsl
>>> from parsl_dragon import DragonExecutor
>>> parsl.load(parsl.Config(executors=[DragonExecutor()]))  # doctest: +SKIP
"""
from parsl_dragon.driver.executor import DragonExecutor
from parsl_dragon.driver.launchers import DragonLauncher
from parsl_dragon.errors import (
    AuthenticationFailed,
    ConfigurationError,
    DragonExecutorError,
    HandshakeTimeout,
    InsecureKeyPath,
    InsecurePath,
    PayloadTooLarge,
    ProtocolError,
    RankFailure,
    ServerConnectionError,
    ServerLost,
    ServerStartupError,
    TaskLost,
    VersionMismatch,
    WorkerLost,
)
from parsl_dragon.task.monitoring import DragonRadio

__version__ = "0.1.0"

__all__ = [
    "DragonExecutor", "DragonLauncher", "DragonRadio", "DragonExecutorError", "ConfigurationError", "InsecureKeyPath",
    "ServerStartupError", "ServerConnectionError", "AuthenticationFailed", "HandshakeTimeout",
    "VersionMismatch", "ServerLost", "WorkerLost", "TaskLost", "PayloadTooLarge", "InsecurePath", "ProtocolError",
    "RankFailure",
]
