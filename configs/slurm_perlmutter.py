"""NERSC Perlmutter (Slurm, HPE Slingshot 11): DragonExecutor blocks of whole GPU or CPU nodes.

Run the driver on a login node; each block is one ``sbatch`` job whose batch script runs
our boot command once (``DragonLauncher``); boot starts ``dragon -w slurm`` for multi-node
blocks, and Dragon starts its backend and our workers on every node of the job.

A GPU node (the default): 1 AMD EPYC 7763 (64 cores) and 4 A100s, devices ``"0"`` .. ``"3"``
(``available_accelerators=4``); GPU apps ask for them with ``gpus_per_rank`` in
``parsl_resource_specification`` (docs/gpus.md). A CPU node: 2 EPYC 7763 (128 cores), no GPU
(``available_accelerators`` unset: Dragon finds none and a GPU task is refused at submit).

Environment used here (explicit settings below beat them):

* ``PARSL_DRAGON_ACCOUNT``  NERSC project to charge (``#SBATCH -A``), e.g. ``m1234``
* ``PARSL_DRAGON_VENV``     venv with parsl-dragon[server] installed on the compute nodes'
  file system (default ``$HOME/venvs/parsl-dragon``; ``$SCRATCH`` or ``/global/common/software``
  start faster at scale)
* ``PARSL_DRAGON_NODES``    nodes per block (default 2)
* ``PARSL_DRAGON_NODE_TYPE`` ``gpu`` (default) or ``cpu``
"""
import os

from parsl.config import Config
from parsl.providers import SlurmProvider

from parsl_dragon import DragonExecutor
from parsl_dragon.driver.launchers import DragonLauncher

ACCOUNT = os.environ.get("PARSL_DRAGON_ACCOUNT", "m0000")  # placeholder: set PARSL_DRAGON_ACCOUNT
VENV = os.environ.get("PARSL_DRAGON_VENV", os.path.expanduser("~/venvs/parsl-dragon"))
NODES_PER_BLOCK = int(os.environ.get("PARSL_DRAGON_NODES", "2"))
NODE_TYPE = os.environ.get("PARSL_DRAGON_NODE_TYPE", "gpu")
GPU = NODE_TYPE == "gpu"


def fresh_config() -> Config:
    provider = SlurmProvider(
        account=ACCOUNT,
        qos="regular",             # "debug" for <= 30 min / <= 8 nodes turnaround
        constraint="gpu" if GPU else "cpu",
        scheduler_options="#SBATCH --gpus-per-node=4" if GPU else "",  # all 4 A100s of each node
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
            workers_per_node=62 if GPU else 126,  # cores minus 2 for Dragon's busy-polling infrastructure
            available_accelerators=4 if GPU else None,  # 4 A100s: CUDA_VISIBLE_DEVICES ids "0".."3"
            transport="hsta",      # Slingshot 11 + libfabric cxi; "tcp" to rule out HSTA when debugging
        )],
        strategy_period=5.0,
    )
