"""Can a PMI backend work on this node? Probed up front, so a task fails fast instead of hanging.

Facts this encodes (see DESIGN.md): Dragon's ``cray`` path needs Cray PMI / PALS (with
another MPI the ranks start as unconnected singletons); its ``pmix`` path needs a PMIx
library, and without a usable one it has hung the whole runtime. ``mpiexec`` needs an
``mpiexec`` on PATH; ``none`` starts ranks without any wire-up. No probe here imports dragon.
"""
from __future__ import annotations

import ctypes.util
import glob
import os
import shutil
from typing import Mapping, Optional

from parsl_dragon.vocabulary import PMI_BACKENDS

_CRAY_PMI_GLOBS = ("/opt/cray/pe/pmi/*/lib/libpmi*.so*", "/opt/cray/pe/lib64/libpmi*.so*")


def _cray_pmi_present(env: Mapping[str, str]) -> bool:
    if any(glob.glob(pattern) for pattern in _CRAY_PMI_GLOBS):
        return True
    library = ctypes.util.find_library("pmi2") or ctypes.util.find_library("pmi")
    return bool(library and env.get("PALS_APID") is not None) or bool(env.get("CRAY_PMI_INCLUDE_OPTS"))


def problem(backend: str, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Why ``backend`` cannot launch ranks here, with what to use instead; None if it can."""
    env = os.environ if env is None else env
    if backend not in PMI_BACKENDS:
        return f"unknown PMI backend {backend!r}; choose one of {', '.join(PMI_BACKENDS)}"
    if backend == "cray" and not _cray_pmi_present(env):
        return ("pmi='cray' needs Cray PMI (cray-pmi / PALS, as on HPE Cray EX systems) and none was found "
                "on this node: MPI ranks would start as unconnected singletons. Use pmi='mpiexec' to start "
                "ranks with the site's mpiexec, or pmi='none' for ranks without MPI wire-up")
    if backend == "pmix" and ctypes.util.find_library("pmix") is None:
        return ("pmi='pmix' needs a PMIx library (libpmix) on the nodes and none was found; without it "
                "Dragon's PMIx server can hang the runtime. Use pmi='mpiexec' or pmi='none'")
    if backend == "mpiexec" and shutil.which("mpiexec", path=env.get("PATH")) is None:
        return ("pmi='mpiexec' needs an mpiexec on PATH on the task's first node and none was found: load the "
                "site's MPI (its module or PATH), or use pmi='cray' on HPE Cray EX systems or pmi='none' for ranks "
                "without MPI wire-up")
    return None
