"""Blocks (blocks.py): the block command and start-up error text, checked as text; the watcher of
a launch and BlockWatch, with a fake provider."""
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


def _published(path, launch_id, pid=1):
    import os
    import socket
    import time

    from parsl_dragon.wire.connection import ConnectionInfo, write_connection
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_connection(path, ConnectionInfo(
        protocol=1, address="tcp://127.0.0.1:1", server_public_key="k", host=socket.gethostname(), pid=pid,
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


# ---- BlockWatch: the executor's blocks, from boot command to server or failure ----------
class Provider:
    """Job states by job id; records cancels."""

    def __init__(self, states=None):
        self.states = states or {}
        self.cancelled = []

    def status(self, job_ids):
        from parsl.jobs.states import JobStatus
        return [JobStatus(self.states[j]) for j in job_ids]

    def cancel(self, job_ids):
        self.cancelled.append(list(job_ids))
        return [True] * len(job_ids)


def watch(provider=None, **callbacks):
    from parsl_dragon.driver.blocks import BlockWatch
    events = []
    blocks = BlockWatch(provider, callbacks.get("connect", lambda info: ("link", info.server_id)),
                        lambda link, block_id: events.append(("server", link, block_id)),
                        lambda launch, exc: events.append(("failed", launch.block_id, exc)),
                        cancelled=callbacks.get("cancelled", lambda: False))
    return blocks, events


def test_the_first_launch_publishes_at_the_shared_path_the_next_in_their_block_dirs(tmp_path):
    from parsl_dragon.driver.settings import resolve_settings
    from parsl_dragon.wire.connection import connection_path

    blocks, _ = watch()
    settings = resolve_settings(server_path=str(tmp_path / "shared"))
    first = shlex.split(blocks.command("0", str(tmp_path / "run"), settings, {}, driver_pid=None))
    second = shlex.split(blocks.command("1", str(tmp_path / "run"), settings, {}, driver_pid=None))
    assert first[first.index("--connection-file") + 1] == connection_path(str(tmp_path / "shared"))
    assert second[second.index("--connection-file") + 1] == connection_path(str(tmp_path / "run" / "block-1"))
    assert sorted(blocks.launches) == ["0", "1"] and (tmp_path / "run" / "block-1").is_dir()


def test_a_watcher_hands_its_server_over_or_reports_the_failure(tmp_path):
    from parsl_dragon.errors import AuthenticationFailed, ServerStartupError
    from parsl_dragon.wire.connection import connection_path

    blocks, events = watch()
    lb = blocks.launches["0"] = BlockLaunch("0", str(tmp_path / "block-0"), connection_path(str(tmp_path / "x")),
                                            launched=0.0)
    _published(connection_path(lb.block_dir), lb.launch_id)
    blocks.watch("0", "job-0", startup_timeout_s=5.0)
    blocks.join(timeout=5)
    assert events == [("server", ("link", lb.launch_id), "0")] and lb.job_id == "job-0"

    def refuse(info):
        raise AuthenticationFailed("not our server")

    def bug(info):
        raise KeyError("a bug")

    for connect, error in ((refuse, AuthenticationFailed), (bug, ServerStartupError)):
        blocks, events = watch(connect=connect)
        blocks.launches["0"] = lb
        blocks.watch("0", "job-0", startup_timeout_s=5.0)
        blocks.join(timeout=5)
        [(kind, block_id, exc)] = events
        assert (kind, block_id, type(exc)) == ("failed", "0", error)


def test_a_cancelled_watcher_reports_nothing(tmp_path):
    blocks, events = watch(cancelled=lambda: True)
    blocks.launches["0"] = launch(tmp_path)
    blocks.watch("0", "job-0", startup_timeout_s=5.0)
    blocks.join(timeout=5)
    assert events == []


def test_a_failed_block_is_failed_if_its_job_ended_else_missing(tmp_path):
    from parsl.jobs.states import JobState

    from parsl_dragon.errors import ServerStartupError

    provider = Provider({"ended": JobState.COMPLETED, "running": JobState.RUNNING})
    blocks, _ = watch(provider)
    lb = launch(tmp_path)
    lb.job_id = "ended"
    status = blocks.failed_status(lb, ServerStartupError("no server"))
    assert (status.state, status.message) == (JobState.FAILED, "no server")
    lb.job_id = "running"
    assert blocks.failed_status(lb, ServerStartupError("no server")).state == JobState.MISSING
    blocks.cancel(lb)
    assert provider.cancelled == [["running"]]


def test_end_jobs_cancels_after_the_jobs_ended_or_the_wait_is_over():
    from parsl.jobs.states import JobState

    provider = Provider({"a": JobState.COMPLETED, "b": JobState.RUNNING})
    blocks, _ = watch(provider)
    blocks.end_jobs(["a"], wait_s=60.0)  # ended: no wait
    blocks.end_jobs(["a", "b"], wait_s=0.0)
    blocks.end_jobs([], wait_s=60.0)
    assert provider.cancelled == [["a"], ["a", "b"]]


def test_cancel_in_background_cancels_the_job_on_its_own_thread():
    import time

    provider = Provider()
    blocks, _ = watch(provider)
    blocks.cancel_in_background("3", "job-3")
    deadline = time.monotonic() + 5
    while not provider.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert provider.cancelled == [["job-3"]]


def test_the_published_address_is_loopback_only_on_the_drivers_host():
    from parsl.providers import LocalProvider, SlurmProvider

    from parsl_dragon.driver.blocks import host_address, on_driver_host

    local, slurm = LocalProvider(), SlurmProvider()
    assert on_driver_host(local) and not on_driver_host(slurm)
    assert host_address(None, local) == "127.0.0.1" and host_address(None, slurm) == "auto"
    assert host_address("10.0.0.5", local) == "10.0.0.5"


def test_a_shared_servers_stale_connection_file_is_removed(tmp_path):
    import os
    import subprocess

    from parsl_dragon.driver.blocks import shared_server
    from parsl_dragon.wire.connection import connection_path

    assert shared_server(str(tmp_path / "none")) is None
    path = connection_path(str(tmp_path / "shared"))
    _published(path, "live")  # pid 1 on this host: alive
    assert shared_server(str(tmp_path / "shared")).server_id == "live"
    gone = subprocess.Popen(["true"])
    gone.wait()
    os.unlink(path)
    _published(path, "stale", pid=gone.pid)
    assert shared_server(str(tmp_path / "shared")) is None and not os.path.exists(path)


def test_an_accelerator_list_reaches_the_server_as_one_word_and_no_device_as_an_empty_one(tmp_path):
    for value, word in (("0.0,0.1", "0.0,0.1"), ("", "")):
        server = shlex.split(boot_command(launch(tmp_path), "/keys", "auto", {"accelerators": value}))
        server = server[server.index("--") + 1:]
        assert server[server.index("--accelerators") + 1] == word
