"""A server shared between workflows through server_path, and keys it does not trust."""
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
from parsl import python_app

from parsl_dragon import AuthenticationFailed, DragonExecutor
from parsl_dragon.wire.connection import connection_path, read_connection


@python_app
def server_of_worker():
    import os
    return os.environ["PARSL_DRAGON_SERVER_ID"]


SECOND_WORKFLOW = textwrap.dedent("""
    import sys, parsl
    from parsl import python_app
    from parsl_dragon import DragonExecutor

    @python_app
    def server_of_worker():
        import os
        return os.environ["PARSL_DRAGON_SERVER_ID"]

    dfk = parsl.load(parsl.Config(executors=[DragonExecutor(server_path=sys.argv[1], heartbeat_period=1.0)],
                                  run_dir=sys.argv[2], strategy_period=0.2))
    print("SERVER", server_of_worker().result(timeout=120), flush=True)
    dfk.cleanup()
""")


def test_second_workflow_attaches_to_shared_server(load_dfk, tmp_path):
    server_dir = str(tmp_path / "shared")
    load_dfk(server_path=server_dir)
    first = server_of_worker().result(timeout=120)
    info = read_connection(connection_path(server_dir))
    assert info.server_id == first

    script = tmp_path / "second.py"
    script.write_text(SECOND_WORKFLOW)
    done = subprocess.run([sys.executable, str(script), server_dir, str(tmp_path / "runinfo2")],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"SERVER {first}" in done.stdout
    assert not os.path.exists(tmp_path / "runinfo2" / "000" / "DragonExecutor"), "attached: no block of its own"

    # the attached workflow detached; the owner's server keeps serving
    assert server_of_worker().result(timeout=60) == first


def test_untrusted_key_is_rejected_quickly(load_dfk, tmp_path, monkeypatch):
    # Over TCP + CURVE, as from another host: on the server's own host a process of this user
    # reaches it through the block's Unix socket, where the directory, not the key, is the guard.
    monkeypatch.setenv("PARSL_DRAGON_LOCAL_LINKS", "0")
    server_dir = str(tmp_path / "shared")
    load_dfk(server_path=server_dir)
    assert server_of_worker().result(timeout=120)

    # Another key directory with the same server key (so the driver's pin passes) but its own
    # client key: the server's ZAP handler must refuse that client.
    other_keys = tmp_path / "other-keys"
    other_keys.mkdir(mode=0o700)
    ours = os.environ["PARSL_DRAGON_KEY_PATH"]
    for name in ("server.key", "server.key_secret"):
        shutil.copy2(os.path.join(ours, name), other_keys / name)
    intruder = DragonExecutor(label="intruder", server_path=server_dir, key_path=str(other_keys))
    intruder.run_dir = str(tmp_path / "intruder")
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed, match="not trust"):
        intruder.start()
    assert time.monotonic() - started < 5
    intruder.shutdown()
    server_log = read_connection(connection_path(server_dir)).log_path
    deadline = time.monotonic() + 5
    while "Denied connection" not in open(server_log).read() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Denied connection" in open(server_log).read()
    # the server is unaffected
    assert server_of_worker().result(timeout=60)
