"""OLCF Frontier (Slurm, HPE Slingshot 11): DragonExecutor blocks on the batch partition.

Each block is one ``sbatch`` job; ``DragonLauncher`` runs our boot command once on the
first node, boot starts ``dragon -w slurm`` across the job's nodes. Frontier reserves 8 of
each node's 64 cores for the system (core specialization), leaving 56, and has 4 MI250X
per node: 8 GCDs, each its own device ``"0"`` .. ``"7"`` (``available_accelerators=8``); GPU
apps ask for them with ``gpus_per_rank`` in ``parsl_resource_specification`` (docs/gpus.md).

Environment used here:

* ``PARSL_DRAGON_ACCOUNT``  OLCF project (``#SBATCH -A``), e.g. ``abc123``
* ``PARSL_DRAGON_VENV``     venv with parsl-dragon[server] on Orion/NFS
  (default ``$HOME/venvs/parsl-dragon``; ``/lustre/orion/<proj>/...`` at scale)
* ``PARSL_DRAGON_NODES``    nodes per block (default 2)
"""
import os

from parsl.config import Config
from parsl.providers import SlurmProvider

from parsl_dragon import DragonExecutor
from parsl_dragon.driver.launchers import DragonLauncher

ACCOUNT = os.environ.get("PARSL_DRAGON_ACCOUNT", "abc000")  # placeholder: set PARSL_DRAGON_ACCOUNT
VENV = os.environ.get("PARSL_DRAGON_VENV", os.path.expanduser("~/venvs/parsl-dragon"))
NODES_PER_BLOCK = int(os.environ.get("PARSL_DRAGON_NODES", "2"))


def fresh_config() -> Config:
    provider = SlurmProvider(
        partition="batch",        # "extended" for long, small jobs
        account=ACCOUNT,
        nodes_per_block=NODES_PER_BLOCK,
        init_blocks=1, min_blocks=0, max_blocks=1,
        walltime="02:00:00",      # batch-queue limit for small jobs
        exclusive=True,
        scheduler_options="#SBATCH -S 8",  # the default core specialization, stated explicitly
        launcher=DragonLauncher(),
        worker_init=(f"module load PrgEnv-gnu cray-python; source {VENV}/bin/activate; "
                     "export PYTHONUNBUFFERED=1"),
        cmd_timeout=120,
    )
    return Config(
        executors=[DragonExecutor(
            label="dragon_frontier",
            provider=provider,
            workers_per_node=54,  # 56 usable cores minus 2 for Dragon's infrastructure
            available_accelerators=8,  # 4 MI250X = 8 GCDs: ROCR_VISIBLE_DEVICES ids "0".."7"
            transport="hsta",     # Slingshot 11 (libfabric cxi); "tcp" when debugging start-up
        )],
        strategy_period=5.0,
    )
