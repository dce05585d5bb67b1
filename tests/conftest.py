"""Fixtures shared by the whole parsl-dragon test-suite.

* ``_isolated_key_path`` (autouse, session): points ``PARSL_DRAGON_KEY_PATH`` at a
  fresh 0700 temporary directory, so no test reads or writes ``~/.parsl_dragon``.
* ``no_leaks`` (opt-in): fails a test that leaves Dragon/parsl-dragon processes,
  ``/dev/shm`` Dragon pools or ``/tmp/dragon-*`` behind. Helpers are in ``tests/leaks.py``.
* ``deadline`` (opt-in): fails a test body that blocks for more than 10 s.
* ``spawn`` (opt-in): starts stand-in processes, with or without a block token; kills and
  reaps them afterwards.
"""

import os
import shutil
import signal
import subprocess
import tempfile

import pytest

try:  # tests/ as a package
    from . import leaks
except ImportError:  # tests/ as a rootdir-relative conftest directory (pytest's default)
    import leaks

from parsl_dragon.vocabulary import ENV_BLOCK_TOKEN, ENV_KEY_PATH

KEY_PATH_VAR = ENV_KEY_PATH
LEAK_TIMEOUT = 30.0
OTHER_UID = 65534  # nobody: the tests run as root, who may chown a file to simulate another user


@pytest.fixture(scope="session", autouse=True)
def _isolated_key_path():
    """A private key directory for the whole session; removed afterwards."""
    path = tempfile.mkdtemp(prefix="parsl-dragon-keys-")
    os.chmod(path, 0o700)
    previous = os.environ.get(KEY_PATH_VAR)
    os.environ[KEY_PATH_VAR] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(KEY_PATH_VAR, None)
        else:
            os.environ[KEY_PATH_VAR] = previous
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def no_leaks():
    """Assert the test leaves no new Dragon processes, shm pools or /tmp/dragon-* behind.

    Things that existed before the test are ignored; new ones get up to
    ``LEAK_TIMEOUT`` seconds to go away before the test errors in teardown."""
    before = leaks.snapshot()
    yield before
    leaked = leaks.wait_for_no_leaks(before, timeout=LEAK_TIMEOUT)
    assert not leaked, f"left behind after {LEAK_TIMEOUT:.0f}s:\n" + leaks.describe(leaked)


@pytest.fixture
def deadline():
    """Fail (instead of hanging) if the test body blocks for more than 10 s, e.g. on a FIFO."""
    def expire(*_):
        pytest.fail("blocked for 10 s")  # not an OSError: nothing may mistake it for a read error
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def spawn():
    """``spawn(token=None, extra_env=None, argv=("sleep", "300"))`` starts a child whose
    environment carries the block token ``token`` (and no other); every child is killed and
    reaped afterwards."""
    children = []

    def start(token=None, extra_env=None, argv=("sleep", "300")):
        env = {k: v for k, v in os.environ.items() if k != ENV_BLOCK_TOKEN}
        if token is not None:
            env[ENV_BLOCK_TOKEN] = token
        env.update(extra_env or {})
        child = subprocess.Popen(list(argv), env=env)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
