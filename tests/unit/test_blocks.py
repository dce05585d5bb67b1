"""The block command and start-up error text (blocks.py), checked as text."""
import shlex

from parsl_dragon.blocks import BlockLaunch, boot_command, startup_error


def launch(tmp_path):
    return BlockLaunch("3", str(tmp_path / "block 3"), str(tmp_path / "block 3" / "connection.json"), launched=0.0)


def test_boot_command_names_every_setting_and_quotes_paths(tmp_path):
    text = boot_command(launch(tmp_path), "/keys", "tcp", 300.0,
                        {"host_address": "auto", "workers_per_node": None, "cores_per_node": 8,
                         "debug": True, "heartbeat_period": 2.0, "rank_startup_timeout": -1},
                        python="/venv/bin/python")
    argv = shlex.split(text)
    assert argv[:3] == ["/venv/bin/python", "-m", "parsl_dragon.server.boot"]
    assert argv[argv.index("--block-dir") + 1] == str(tmp_path / "block 3"), "a path with a space stays one word"
    assert argv[argv.index("--transport") + 1] == "tcp"
    server = argv[argv.index("--") + 1:]
    assert server[server.index("--connection-file") + 1].endswith("connection.json")
    assert server[server.index("--block-id") + 1] == "3"
    assert server[server.index("--idle-timeout") + 1] == "300.0"
    assert server[server.index("--cores-per-node") + 1] == "8"
    assert server[server.index("--heartbeat-period") + 1] == "2.0"
    assert server[server.index("--rank-startup-timeout") + 1] == "-1"
    assert "--debug" in server and "--workers-per-node" not in server


def test_boot_command_waits_forever_when_startup_timeout_is_infinite(tmp_path):
    argv = shlex.split(boot_command(launch(tmp_path), "/keys", "auto", None, {}))
    assert argv[argv.index("--idle-timeout") + 1] == "-1"


def test_startup_error_quotes_the_logs(tmp_path):
    lb = launch(tmp_path)
    (tmp_path / "block 3").mkdir()
    (tmp_path / "block 3" / "boot.log").write_text("line one\nthe runtime said no\n")
    message = str(startup_error(lb, "no server within the start-up timeout of 5s"))
    assert "block 3 did not start a Dragon server" in message
    assert "the runtime said no" in message and "server.log" in message
