"""Make ``engine: type: DragonEngine`` resolve in a Globus Compute endpoint's YAML.

A user endpoint process reads its configuration only as YAML and builds its engine with
``getattr(globus_compute_endpoint.engines, <type>)``: no import paths, no entry points. So
``DragonEngine`` has to be an attribute of that module in a process that imports nothing of
ours. parsl-dragon's wheel installs ``parsl_dragon_globus_compute.pth`` at the top of
site-packages (setup.py), and Python's ``site`` runs its one line at interpreter start::

    interpreter start   site: parsl_dragon_globus_compute.pth -> install()
                        (a finder on sys.meta_path; imports nothing of Globus Compute)
    import globus_compute_endpoint.engines
                        the finder wraps that module's loader: once the module has run,
                        expose() gives it a module __getattr__ (PEP 562)
    getattr(engines, "DragonEngine")
                        imports parsl_dragon.globus_compute.engine, caches the class

Nothing is imported eagerly: a process that never touches Globus Compute pays for one small
module and a finder that compares one module name per import. A failure to import the engine
(a broken install) raises that ImportError from ``getattr`` rather than hiding behind the
endpoint's "not a valid engine". ``python -S`` (no ``site``) skips ``.pth`` files, and with
them this hook. docs/globus-compute.md has the trade-offs and the upstream change that would
make the hook unnecessary.
"""
from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

if TYPE_CHECKING:  # not at run time: this module is imported at every interpreter start (~1 ms budget)
    import types
    from importlib.machinery import ModuleSpec

ENGINES_MODULE = "globus_compute_endpoint.engines"
ENGINE_NAME = "DragonEngine"
ENGINE_MODULE = "parsl_dragon.globus_compute.engine"


def install() -> None:
    """Expose ``DragonEngine`` in the engines module: now if it is imported, else when it is."""
    module = sys.modules.get(ENGINES_MODULE)
    if module is not None:
        expose(module)
    if not any(isinstance(finder, EnginesFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, EnginesFinder())


def expose(module: types.ModuleType) -> None:
    """Give ``module`` a ``__getattr__`` and ``__dir__`` that add ``DragonEngine`` to its names,
    keeping any the module had. Idempotent."""
    if getattr(module.__dict__.get("__getattr__"), "_parsl_dragon", False):
        return
    previous_getattr = module.__dict__.get("__getattr__")
    previous_dir = module.__dict__.get("__dir__")

    def __getattr__(name: str) -> Any:
        if name == ENGINE_NAME:
            engine = getattr(importlib.import_module(ENGINE_MODULE), ENGINE_NAME)
            setattr(module, ENGINE_NAME, engine)  # found directly from now on
            return engine
        if previous_getattr is not None:
            return previous_getattr(name)
        raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

    def __dir__() -> List[str]:
        names = previous_dir() if previous_dir is not None else list(module.__dict__)
        return sorted(set(names) | {ENGINE_NAME})

    __getattr__._parsl_dragon = True  # type: ignore[attr-defined]
    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__dir__ = __dir__  # type: ignore[method-assign]


class EnginesFinder:
    """A meta path finder (duck-typed: importlib.abc costs milliseconds at start-up) that finds nothing
    itself: it asks the other finders for the engines module's spec and wraps its loader so that
    :func:`expose` runs once the module has executed."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[types.ModuleType] = None
                  ) -> Optional[ModuleSpec]:
        if fullname != ENGINES_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = ExposingLoader(spec.loader)
        return spec


class ExposingLoader:
    """The engines module's own loader, plus :func:`expose` after it has run the module."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> Optional[types.ModuleType]:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.loader.exec_module(module)
        expose(module)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, get_resource_reader, ...
        return getattr(self.loader, name)
