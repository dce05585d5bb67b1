"""Globus Compute: ``DragonEngine``, an endpoint engine that runs functions on DragonExecutor blocks.

Install with the extra (``pip install "parsl-dragon[globus-compute]"``) and name the engine in an
endpoint's YAML as ``engine: type: DragonEngine`` (docs/globus-compute.md). ``DragonEngine`` is
imported on first use: this package is also imported at every interpreter start of the venv (the
``.pth`` hook in ``registration.py``), which must not pull in Globus Compute or Parsl.
"""
from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "DragonEngine":
        return importlib.import_module("parsl_dragon.globus_compute.engine").DragonEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
