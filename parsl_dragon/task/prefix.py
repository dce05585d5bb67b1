"""What ``$PARSL_MPI_PREFIX`` is for one MPI task, by the task's ``pmi``::

    mpiexec           [timeout -k 5 S] /path/mpiexec -n N -ppn R -hosts h1,h2 [label] [launcher_options]
                          [bash gpu_bind.sh]
                      the site's mpiexec, run by the app itself as in HTEX's MPI mode: no wrapper,
                      no interpreter, no server round trip (each would cost as much as mpiexec's
                      own ~7 ms start here); under timeout(1) when the task has a ``walltime``;
                      each rank through ``gpu_bind.sh`` (its own GPUs) when it has ``gpus_per_rank``
    none, cray, pmix  bash prefix.sh dragon
                      Dragon starts the ranks: the worker's rank service asks the server

A backend that cannot work here (no ``mpiexec`` on PATH, no Cray PMI, no libpmix) gets ``bash
prefix.sh refused``, which fails every launch with the reason the worker put in
``PARSL_DRAGON_PMI_PROBLEM``. The shell splits ``$PARSL_MPI_PREFIX`` on whitespace and takes
quotes in it literally, as it does HTEX's: so the line is joined with spaces, never quoted, and
holds nothing that would need quoting but ``launcher_options``, which goes in as written.

The label option makes mpiexec prefix every output line with its rank, as Dragon-launched
ranks are labelled ``[rank N]``: ``-prepend-rank`` for MPICH's Hydra, ``--tag-output`` for
Open MPI, ``--label`` for Cray PALS; an mpiexec we do not recognize gets none. ``mpiexec
--version`` is asked once per worker and mpiexec path.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from typing import List, Optional

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.spec import TaskSpec
from parsl_dragon.task.devices import GPU_BIND_SCRIPT

logger = logging.getLogger(__name__)

MPIEXEC_KILL_AFTER_S = 5  # timeout(1): from SIGTERM at the walltime to SIGKILL
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prefix.sh")
# (marker in `mpiexec --version`, option that labels each output line with its rank)
_LABEL_OPTIONS = (("HYDRA", "-prepend-rank"), ("Open MPI", "--tag-output"), ("OpenRTE", "--tag-output"),
                  ("PALS", "--label"))


def bash() -> str:
    """The bash that runs the prefix (``prefix.sh`` uses bash's ``read -t``)."""
    return shutil.which("bash") or "/bin/bash"


@functools.lru_cache(maxsize=8)
def label_option(mpiexec: str) -> Optional[str]:
    """The option that makes ``mpiexec`` label output lines with their rank; None if unknown."""
    try:
        version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=10,
                                 errors="replace")
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("Could not ask %s for its version (%s): its output lines will not be labelled", mpiexec, exc)
        return None
    text = version.stdout + version.stderr
    for marker, option in _LABEL_OPTIONS:
        if marker in text:
            return option
    logger.warning("Unknown mpiexec %s: its output lines will not be labelled with ranks", mpiexec)
    return None


def mpiexec_words(mpiexec: str, spec: TaskSpec, placement: Placement) -> List[str]:
    """``mpiexec -n N -ppn R -hosts ...`` for the task's placement, as HTEX builds it."""
    label = label_option(mpiexec)
    return [mpiexec, "-n", str(spec.num_ranks), "-ppn", str(spec.ranks_per_node), "-hosts", ",".join(placement.hosts),
            *([label] if label else []), *([spec.launcher_options] if spec.launcher_options.strip() else [])]


def prefix_command(spec: TaskSpec, placement: Placement, problem: Optional[str] = None) -> str:
    """``$PARSL_MPI_PREFIX`` for an MPI task; ``problem``: the backend cannot work here (the
    worker exports it as ``PARSL_DRAGON_PMI_PROBLEM``)."""
    head = [bash(), SCRIPT]
    if problem:
        return " ".join([*head, "refused"])
    if spec.pmi != "mpiexec":
        return " ".join([*head, "dragon"])
    mpiexec = shutil.which("mpiexec") or "mpiexec"
    timeout = [] if spec.walltime is None else ["timeout", "-k", str(MPIEXEC_KILL_AFTER_S), f"{float(spec.walltime):g}"]
    bind = [bash(), GPU_BIND_SCRIPT] if spec.gpus_per_rank else []
    return " ".join([*timeout, *mpiexec_words(mpiexec, spec, placement), *bind])
