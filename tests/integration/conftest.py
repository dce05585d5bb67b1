"""Integration fixtures: real Dragon runtime, real Parsl DFKs.

Tests here are marked ``dragon``. Where ``dragonhpc`` is not installed they are
skipped, except under ``CI=true``, where a missing runtime is an error.
"""
import fcntl
import importlib.util
import os

import parsl
import pytest
from parsl.config import Config

from parsl_dragon import DragonExecutor

# Apps defined in these test modules are pickled by reference (tests.integration.*):
# the workers, started inside the block, must be able to import them, as a user's
# workers must import the user's modules.
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO, os.environ.get("PYTHONPATH")) if p)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.dragon)


LOCK_FILE = "/tmp/parsl-dragon-integration.lock"


@pytest.fixture(scope="session", autouse=True)
def _require_dragon():
    """Need dragonhpc; and hold a machine-wide lock so two integration sessions never
    overlap (each one's leak checks would see the other's runtimes, and on a small
    machine two busy-polling runtimes starve each other)."""
    if importlib.util.find_spec("dragon") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dragonhpc is not installed, and CI=true requires the Dragon integration tests")
        pytest.skip("dragonhpc is not installed")
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def dragon_config(run_dir, config_options=None, **executor_kwargs) -> Config:
    """One DragonExecutor on the local machine, tuned for a 2-core test box;
    ``config_options`` are extra ``Config`` arguments (e.g. ``max_idletime``)."""
    executor_kwargs.setdefault("workers_per_node", 1)
    executor_kwargs.setdefault("heartbeat_period", 1.0)
    return Config(executors=[DragonExecutor(**executor_kwargs)], run_dir=str(run_dir), strategy_period=0.2,
                  **(config_options or {}))


@pytest.fixture
def load_dfk(no_leaks, tmp_path):
    """Load a DFK from ``dragon_config``; always cleaned up, even if the test fails, and
    afterwards nothing of the run may remain (``no_leaks`` is torn down after this)."""
    loaded = []

    def _load(config_options=None, **executor_kwargs):
        dfk = parsl.load(dragon_config(tmp_path / "runinfo", config_options, **executor_kwargs))
        loaded.append(dfk)
        _load.last = dfk
        return dfk

    yield _load
    for dfk in loaded:
        if not dfk.cleanup_called:
            dfk.cleanup()
    parsl.clear()
