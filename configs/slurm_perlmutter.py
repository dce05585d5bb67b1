"""NERSC Perlmutter (Slurm, HPE Slingshot 11): DragonExecutor blocks of whole CPU nodes.

Run the driver on a login node; each block is one ``sbatch`` job whose batch script runs
our boot command once (``DragonLauncher``); boot starts ``dragon -w slurm`` for multi-node
blocks, and Dragon starts its backend and our workers on every node of the job.

Environment used here (explicit settings below beat them):

* ``PARSL_DRAGON_ACCOUNT``  NERSC project to charge (``#SBATCH -A``), e.g. ``m1234``
* ``PARSL_DRAGON_VENV``     venv with parsl-dragon[server] installed on the compute nodes'
  file system (default ``$HOME/venvs/parsl-dragon``; ``$SCRATCH`` or ``/global/common/software``
  start faster at scale)
* ``PARSL_DRAGON_NODES``    nodes per block (default 2)
"""
import os

from parsl.config import Config
from parsl.providers import SlurmProvider

from parsl_dragon import DragonExecutor
from parsl_dragon.driver.launchers import DragonLauncher

ACCOUNT = os.environ.get("PARSL_DRAGON_ACCOUNT", "m0000")  # placeholder: set PARSL_DRAGON_ACCOUNT
VENV = os.environ.get("PARSL_DRAGON_VENV", os.path.expanduser("~/venvs/parsl-dragon"))
NODES_PER_BLOCK = int(os.environ.get("PARSL_DRAGON_NODES", "2"))


def fresh_config() -> Config:
    provider = SlurmProvider(
        account=ACCOUNT,
        qos="regular",             # "debug" for <= 30 min / <= 8 nodes turnaround
        constraint="cpu",          # 2x AMD EPYC 7763: 128 cores, 512 GB per node
        nodes_per_block=NODES_PER_BLOCK,
        init_blocks=1, min_blocks=0, max_blocks=1,
        walltime="01:00:00",
        exclusive=True,
        launcher=DragonLauncher(),  # one runtime per block; never SrunLauncher (Dragon hangs in an srun step)
        worker_init=f"module load python; source {VENV}/bin/activate; export PYTHONUNBUFFERED=1",
        cmd_timeout=120,           # Perlmutter's sbatch/squeue can be slow under load
    )
    return Config(
        executors=[DragonExecutor(
            label="dragon_perlmutter",
            provider=provider,
            workers_per_node=126,  # 128 cores minus 2 for Dragon's busy-polling infrastructure
            transport="hsta",      # Slingshot 11 + libfabric cxi; "tcp" to rule out HSTA when debugging
        )],
        strategy_period=5.0,
    )
