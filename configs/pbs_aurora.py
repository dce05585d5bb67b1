"""ALCF Aurora (PBS Pro + PALS, HPE Slingshot 11): DragonExecutor blocks of Aurora nodes.

Each block is one ``qsub`` job; ``DragonLauncher`` runs our boot command once on the
first node, boot starts ``dragon -w pbs+pals`` over ``$PBS_NODEFILE``. A node: 2 Xeon
Max CPUs (104 cores, 208 hardware threads) and 6 Intel Data Center GPU Max (12 tiles).
Each tile is one device here: ``available_accelerators`` lists ids ``"0.0"``, ``"0.1"`` ..
``"5.1"`` (GPU.tile, as ``ZE_AFFINITY_MASK`` names them); GPU apps ask for them with
``gpus_per_rank`` in ``parsl_resource_specification`` (docs/gpus.md).

Environment used here:

* ``PARSL_DRAGON_ACCOUNT``  ALCF project (``qsub -A``)
* ``PARSL_DRAGON_VENV``     venv with parsl-dragon[server] built on top of the ``frameworks``
  module (default ``$HOME/venvs/parsl-dragon``; on Flare for large runs)
* ``PARSL_DRAGON_QUEUE``    ``debug`` (1-2 nodes, default), ``debug-scaling`` or ``prod``
* ``PARSL_DRAGON_NODES``    nodes per block (default 2)
"""
import os

from parsl.config import Config
from parsl.providers import PBSProProvider

from parsl_dragon import DragonExecutor
from parsl_dragon.driver.launchers import DragonLauncher

ACCOUNT = os.environ.get("PARSL_DRAGON_ACCOUNT", "MyProject")  # placeholder: set PARSL_DRAGON_ACCOUNT
VENV = os.environ.get("PARSL_DRAGON_VENV", os.path.expanduser("~/venvs/parsl-dragon"))
QUEUE = os.environ.get("PARSL_DRAGON_QUEUE", "debug")
NODES_PER_BLOCK = int(os.environ.get("PARSL_DRAGON_NODES", "2"))


def fresh_config() -> Config:
    provider = PBSProProvider(
        account=ACCOUNT,
        queue=QUEUE,
        nodes_per_block=NODES_PER_BLOCK,
        cpus_per_node=208,
        scheduler_options="#PBS -l filesystems=home:flare\n#PBS -l place=scatter",
        init_blocks=1, min_blocks=0, max_blocks=1,
        walltime="01:00:00",
        launcher=DragonLauncher(),
        worker_init=(f"module load frameworks; source {VENV}/bin/activate; cd $PBS_O_WORKDIR; "
                     "export PYTHONUNBUFFERED=1"),
        cmd_timeout=120,
    )
    return Config(
        executors=[DragonExecutor(
            label="dragon_aurora",
            provider=provider,
            workers_per_node=102,  # 104 cores minus 2 for Dragon's infrastructure
            # 12 tiles as devices "0.0", "0.1" .. "5.1" (GPU.tile): one ZE_AFFINITY_MASK id each
            available_accelerators=[f"{gpu}.{tile}" for gpu in range(6) for tile in range(2)],
            transport="hsta",      # Slingshot 11; "tcp" when debugging start-up
        )],
        strategy_period=5.0,
    )
