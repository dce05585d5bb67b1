"""ALCF Polaris (PBS Pro + PALS, HPE Slingshot 11): DragonExecutor blocks of Polaris nodes.

Each block is one ``qsub`` job; ``DragonLauncher`` runs our boot command once on the
job's first node (the mother superior), and boot starts ``dragon -w pbs+pals`` across the
nodes in ``$PBS_NODEFILE`` for multi-node blocks. A node: 1 AMD EPYC 7543P (32 cores,
64 hardware threads) and 4 A100s, devices ``"0"`` .. ``"3"`` (``available_accelerators=4``);
GPU apps ask for them with ``gpus_per_rank`` in ``parsl_resource_specification`` (docs/gpus.md).

Environment used here:

* ``PARSL_DRAGON_ACCOUNT``  ALCF project (``qsub -A``)
* ``PARSL_DRAGON_VENV``     venv with parsl-dragon[server] (default ``$HOME/venvs/parsl-dragon``;
  on Eagle for large runs)
* ``PARSL_DRAGON_QUEUE``    ``debug`` (1-2 nodes, default), ``debug-scaling`` (<= 10) or ``prod``
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
        cpus_per_node=64,
        select_options="ngpus=4",
        scheduler_options="#PBS -l filesystems=home:eagle\n#PBS -l place=scatter",
        init_blocks=1, min_blocks=0, max_blocks=1,
        walltime="01:00:00",
        launcher=DragonLauncher(),  # never MpiExecLauncher: that starts one runtime per node
        worker_init=(f"module use /soft/modulefiles; module load conda; source {VENV}/bin/activate; "
                     "cd $PBS_O_WORKDIR; export PYTHONUNBUFFERED=1"),
        cmd_timeout=120,
    )
    return Config(
        executors=[DragonExecutor(
            label="dragon_polaris",
            provider=provider,
            workers_per_node=30,  # 32 cores minus 2 for Dragon's infrastructure
            available_accelerators=4,  # 4 A100s: CUDA_VISIBLE_DEVICES ids "0".."3"
            transport="hsta",     # Slingshot 11; "tcp" when debugging start-up
        )],
        strategy_period=5.0,
    )
