"""The GPUs a task runs with: its devices in the GPU variables, for as long as it runs.

A worker is a persistent process that runs one task after another, so a task's devices are
set in the worker's own environment when the task starts (a python app sees them in
``os.environ``, a bash app and everything it starts inherits them) and the variables are put
back as they were when it ends, whatever the task did to them: the next task on that worker
does not see this one's devices. All three of ``core.accelerators.GPU_ENV_VARS`` carry the
same comma-separated ids, as HTEX sets them for its workers.

A GPU runtime that a task initializes *inside* the worker process (CUDA, HIP, Level Zero, e.g.
``torch.cuda`` in a python app) reads the variables once and keeps that process bound to those
devices for its life. So after a task with GPUs the worker looks for such a runtime among its
mapped libraries (:func:`gpu_runtime_loaded`) and, if one is there, retires: its results go
out marked ``retiring``, the server gives it no new task, and it exits; the server starts a
fresh worker in its place. A later task never runs on a runtime bound to another task's devices.

An MPI task's app process gets the devices of its first node; each of its ranks gets its own
share: Dragon-started ranks from the server (``server/backend.py``), ``mpiexec`` ranks from
``task/gpu_bind.sh``, which reads :data:`ENV_RANK_GPUS` and :data:`ENV_GPUS_PER_RANK`.
"""
from __future__ import annotations

import contextlib
import os
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

from parsl_dragon.core.accelerators import GPU_ENV_VARS, Accelerators, device_ids, gpu_environment, parse_accelerators
from parsl_dragon.core.placement import Placement
from parsl_dragon.vocabulary import ENV_ACCELERATORS, ENV_GPUS_PER_RANK, ENV_RANK_GPUS

GPU_BIND_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_bind.sh")


# Libraries whose presence means a GPU runtime may be initialized in this process (driver-level
# libraries, loaded on first use by CUDA; at import by some ROCm and oneAPI builds: then the
# worker retires after every GPU task, which costs a worker start, never a wrong device).
GPU_RUNTIME_LIBRARIES = ("libcuda.so", "libamdhip64.so", "libhsa-runtime64.so", "libze_loader.so",
                         "libze_intel_gpu.so")


def gpu_runtime_loaded(maps: str = "/proc/self/maps") -> Optional[str]:
    """The first GPU runtime library this process has mapped, or None."""
    try:
        with open(maps) as handle:
            for line in handle:
                name = line.rsplit("/", 1)[-1]
                if name.startswith(GPU_RUNTIME_LIBRARIES):
                    return name.strip()
    except OSError:
        return None
    return None


def block_accelerators(env: Optional[Mapping[str, str]] = None) -> Optional[Accelerators]:
    """The block's ``available_accelerators``, as the server gave them to its workers; None:
    the slot table's GPU numbers are the ids (Dragon's count)."""
    env = os.environ if env is None else env
    return parse_accelerators(env.get(ENV_ACCELERATORS), ENV_ACCELERATORS)


def devices_per_host(placement: Optional[Placement], accelerators: Optional[Accelerators]) -> List[List[str]]:
    """The task's device ids on each of its hosts (empty lists: no GPUs)."""
    if placement is None:
        return []
    return [device_ids(slots, accelerators) for slots in placement.gpus]


def rank_gpu_environment(placement: Placement, devices: Sequence[Sequence[str]], gpus_per_rank: int) -> Dict[str, str]:
    """What ``gpu_bind.sh`` reads: every host's devices and the share of one rank."""
    return {ENV_RANK_GPUS: ";".join(f"{host}={','.join(ids)}" for host, ids in zip(placement.hosts, devices)),
            ENV_GPUS_PER_RANK: str(gpus_per_rank)}


@contextlib.contextmanager
def gpu_binding(devices: Sequence[str]) -> Iterator[None]:
    """The GPU variables set to ``devices`` while the task runs (nothing done for no devices);
    afterwards each is what it was before, or unset if it was unset."""
    if not devices:
        yield
        return
    saved = {var: os.environ.get(var) for var in GPU_ENV_VARS}
    os.environ.update(gpu_environment(devices))
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
