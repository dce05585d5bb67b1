"""Config for Parsl's own test-suite (``pytest <parsl>/tests --config configs/conformance.py``).

Parsl's generic tests run unchanged against DragonExecutor. Two workers let the
tests that need concurrency (e.g. two sleeping apps at once) run as with HTEX.
"""
from parsl.config import Config

from parsl_dragon import DragonExecutor


def fresh_config() -> Config:
    return Config(
        executors=[DragonExecutor(label="dragon", workers_per_node=2, heartbeat_period=2.0)],
        strategy_period=0.5,
    )
