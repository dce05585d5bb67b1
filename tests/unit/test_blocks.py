"""The block command and start-up error text (blocks.py), checked as text."""
import shlex

from parsl_dragon.driver.blocks import BlockLaunch, boot_command, startup_error


def launch(tmp_path):
    return BlockLaunch("3", str(tmp_path / "block 3"), str(tmp_path / "block 3" / "connection.json"), launched=0.0)


def test_boot_command_names_every_setting_and_quotes_paths(tmp_path):
    lb = launch(tmp_path)
    text = boot_command(lb, "/keys", "tcp",
                        {"host_address": "auto", "workers_per_node": None, "cores_per_node": 8,
                         "owner_timeout_ms": 60000, "debug": True, "heartbeat_period": 2.0,
                         "rank_startup_timeout_ms": -1},
                        python="/venv/bin/python")
    argv = shlex.split(text)
    assert argv[:3] == ["/venv/bin/python", "-m", "parsl_dragon.server.boot"]
    assert argv[argv.index("--block-dir") + 1] == str(tmp_path / "block 3"), "a path with a space stays one word"
    assert argv[argv.index("--transport") + 1] == "tcp"
    server = argv[argv.index("--") + 1:]
    assert server[server.index("--connection-file") + 1].endswith("connection.json")
    assert server[server.index("--block-id") + 1] == "3"
    assert server[server.index("--launch-id") + 1] == lb.launch_id
    assert server[server.index("--owner-timeout-ms") + 1] == "60000"
    assert server[server.index("--cores-per-node") + 1] == "8"
    assert server[server.index("--heartbeat-period") + 1] == "2.0"
    assert server[server.index("--rank-startup-timeout-ms") + 1] == "-1"
    assert "--debug" in server and "--workers-per-node" not in server


def test_boot_command_makes_the_block_follow_a_driver_on_this_host(tmp_path):
    argv = shlex.split(boot_command(launch(tmp_path), "/keys", "auto", {}, driver_pid=4242))
    assert argv[argv.index("--driver-pid") + 1] == "4242"
    assert argv.index("--driver-pid") < argv.index("--"), "a flag of boot, not of the server"
    assert "--driver-pid" not in shlex.split(boot_command(launch(tmp_path), "/keys", "auto", {}))


def test_each_launch_has_its_own_id(tmp_path):
    assert launch(tmp_path).launch_id != launch(tmp_path).launch_id


def test_startup_error_quotes_the_logs(tmp_path):
    lb = launch(tmp_path)
    (tmp_path / "block 3").mkdir()
    (tmp_path / "block 3" / "boot.log").write_text("line one\nthe runtime said no\n")
    message = str(startup_error(lb, "no server within the start-up timeout of 5s"))
    assert "block 3 did not start a Dragon server" in message
    assert "the runtime said no" in message and "server.log" in message


def _published(path, launch_id):
    import os
    import socket
    import time

    from parsl_dragon.wire.connection import ConnectionInfo, write_connection
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_connection(path, ConnectionInfo(
        protocol=1, address="tcp://127.0.0.1:1", server_public_key="k", host=socket.gethostname(), pid=1,
        launcher_pid=None, job_id=None, block_id="0", server_id=launch_id, created=time.time(), log_path="/x",
        launch_id=launch_id))


def test_the_watcher_takes_only_its_own_launch_and_finds_it_in_the_block_dir(tmp_path):
    import pytest as _pytest

    from parsl_dragon.driver.blocks import wait_for_server
    from parsl_dragon.errors import ServerStartupError
    from parsl_dragon.wire.connection import connection_path

    shared = connection_path(str(tmp_path / "shared"))
    lb = BlockLaunch("0", str(tmp_path / "block-0"), shared, launched=0.0)
    _published(shared, "another-drivers-launch")  # a racing driver's server took the shared path
    with _pytest.raises(ServerStartupError, match="start-up timeout"):
        wait_for_server(lb, 0.0, lambda: None, cancelled=lambda: False)
    _published(connection_path(lb.block_dir), lb.launch_id)  # ours published in its block dir instead
    assert wait_for_server(lb, 5.0, lambda: None, cancelled=lambda: False).server_id == lb.launch_id
