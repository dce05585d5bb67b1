"""Ready config for this machine: one local block running a single-node Dragon runtime.

Use it as ``from configs.local import config`` or pass the file to tools that
expect ``fresh_config()`` (Parsl's test-suite, ``parsl-perf --config``).
"""
from parsl.config import Config

from parsl_dragon import DragonExecutor


def fresh_config() -> Config:
    """A new Config each call (Parsl configs are single-use)."""
    return Config(
        executors=[DragonExecutor(label="dragon")],  # LocalProvider, 1 block, workers = cores - 1
        strategy_period=0.5,  # start the first block without Parsl's default 5 s delay
    )


config = fresh_config()
