"""Config for Parsl's own test-suite with Slurm-backed blocks (``scripts/conformance.sh`` with
``CONFORMANCE_CONFIG=configs/conformance_slurm.py``; ``scripts/test.sh`` runs it when Slurm is up).

The same suite as ``configs/conformance.py``, but every block is a real Slurm job submitted by
Parsl's own ``SlurmProvider`` through ``sbatch``, with ``DragonLauncher`` booting the Dragon
runtime and our server inside it, as on a cluster. Parsl's own Slurm CI does the same with HTEX.

Environment:
    PARSL_DRAGON_CONFORMANCE_PARTITION   Slurm partition (default ``debug``, the test cluster's)
"""
import os
import sys

from parsl.config import Config
from parsl.providers import SlurmProvider

from parsl_dragon import DragonExecutor, DragonLauncher

# The block must find the same interpreter and the Dragon launcher (console scripts in its bin/).
WORKER_INIT = f"export PATH={os.path.dirname(sys.executable)}:$PATH"


def fresh_config() -> Config:
    return Config(
        executors=[DragonExecutor(
            label="dragon", workers_per_node=2, heartbeat_period=2.0, transport="tcp",
            provider=SlurmProvider(
                partition=os.environ.get("PARSL_DRAGON_CONFORMANCE_PARTITION", "debug"),
                nodes_per_block=1, init_blocks=1, min_blocks=0, max_blocks=1, walltime="01:00:00",
                launcher=DragonLauncher(), worker_init=WORKER_INIT, cmd_timeout=60))],
        strategy_period=0.5,
    )
