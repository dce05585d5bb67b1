"""Unit tests for parsl_dragon.wire.connection: the server's connection file."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest

from parsl_dragon.errors import ConfigurationError, InsecurePath
from parsl_dragon.wire import connection as c
from tests.conftest import OTHER_UID


def _info(**overrides) -> c.ConnectionInfo:
    values = dict(protocol=1, address="tcp://10.0.0.5:50123", server_public_key="k" * 40,
                  host="nid0001", pid=4242, launcher_pid=4200, job_id="1234", block_id="0",
                  server_id="0123456789abcdef", created=1732435200.5, log_path="/tmp/server.log")
    values.update(overrides)
    return c.ConnectionInfo(**values)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------- write / read

def test_connection_path_is_inside_directory(tmp_path):
    assert c.connection_path(str(tmp_path)) == str(tmp_path / "connection.json")


def test_round_trip(tmp_path):
    path = c.connection_path(str(tmp_path))
    info = _info()
    c.write_connection(path, info)
    assert c.read_connection(path) == info


def test_round_trip_with_optional_fields_none(tmp_path):
    path = str(tmp_path / "connection.json")
    info = _info(launcher_pid=None, job_id=None, block_id=None)
    c.write_connection(path, info)
    read = c.read_connection(path)
    assert read == info
    assert read.launcher_pid is None and read.job_id is None


def test_file_is_plain_json_with_every_field(tmp_path):
    path = str(tmp_path / "connection.json")
    info = _info()
    c.write_connection(path, info)
    with open(path) as handle:
        data = json.load(handle)
    assert data == dataclasses.asdict(info)
    assert set(data) == {f.name for f in dataclasses.fields(c.ConnectionInfo)}


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_file_mode_is_0600(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = str(tmp_path / "connection.json")
        c.write_connection(path, _info())
    finally:
        os.umask(old)
    assert _mode(path) == 0o600


def test_overwrite_keeps_mode_and_replaces_content(tmp_path):
    path = str(tmp_path / "connection.json")
    c.write_connection(path, _info(server_id="first"))
    os.chmod(path, 0o644)  # even if someone loosened the old file
    c.write_connection(path, _info(server_id="second"))
    assert c.read_connection(path).server_id == "second"
    assert _mode(path) == 0o600


def test_write_creates_missing_directories(tmp_path):
    path = str(tmp_path / "a" / "b" / "connection.json")
    c.write_connection(path, _info())
    assert c.read_connection(path) == _info()


def test_write_to_bare_filename_uses_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c.write_connection("connection.json", _info())
    assert os.listdir(tmp_path) == ["connection.json"]


def test_write_leaves_no_temporary_files(tmp_path):
    path = str(tmp_path / "connection.json")
    for i in range(5):
        c.write_connection(path, _info(pid=i + 1))
    assert os.listdir(tmp_path) == ["connection.json"]
    assert c.read_connection(path).pid == 5


def test_failed_write_keeps_old_file_and_leaves_no_temporary_files(tmp_path):
    path = str(tmp_path / "connection.json")
    c.write_connection(path, _info(server_id="good"))
    with pytest.raises(TypeError):
        c.write_connection(path, _info(created=object()))  # not JSON serializable, fails mid-write
    assert os.listdir(tmp_path) == ["connection.json"]
    assert c.read_connection(path).server_id == "good"


def test_failed_first_write_creates_nothing(tmp_path):
    path = str(tmp_path / "connection.json")
    with pytest.raises(TypeError):
        c.write_connection(path, _info(address={1, 2}))
    assert os.listdir(tmp_path) == []


def test_read_ignores_unknown_fields(tmp_path):
    path = tmp_path / "connection.json"
    data = dataclasses.asdict(_info())
    data["added_by_a_newer_version"] = [1, 2]
    path.write_text(json.dumps(data))
    assert c.read_connection(str(path)) == _info()


def test_read_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        c.read_connection(str(tmp_path / "connection.json"))


@pytest.mark.parametrize("content", [
    "", "{", "not json", '{"protocol": 1,',  # truncated / garbage
    "[]", "[1, 2]", "42", '"text"', "null",  # valid JSON, but not an object
    '{"protocol": 1, "address": "tcp://x:1"}',  # missing fields
])
def test_damaged_file_raises_configuration_error(tmp_path, content):
    path = tmp_path / "connection.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError) as info:
        c.read_connection(str(path))
    assert str(path) in str(info.value)
    assert "damaged" in str(info.value)


def test_binary_garbage_raises_configuration_error(tmp_path):
    path = tmp_path / "connection.json"
    path.write_bytes(b"\xff\xfe\x00\x80garbage")
    with pytest.raises(ConfigurationError):
        c.read_connection(str(path))


def test_reading_a_directory_raises_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError):
        c.read_connection(str(tmp_path))


# ---------------------------------------------------------------- remove

def test_remove_unconditionally(tmp_path):
    path = str(tmp_path / "connection.json")
    c.write_connection(path, _info())
    assert c.remove_connection(path) is True
    assert not os.path.exists(path)


def test_remove_with_matching_server_id(tmp_path):
    path = str(tmp_path / "connection.json")
    c.write_connection(path, _info(server_id="mine"))
    assert c.remove_connection(path, server_id="mine") is True
    assert not os.path.exists(path)


def test_remove_with_other_server_id_keeps_file(tmp_path):
    path = str(tmp_path / "connection.json")
    c.write_connection(path, _info(server_id="theirs"))
    assert c.remove_connection(path, server_id="mine") is False
    assert c.read_connection(path).server_id == "theirs"


def test_remove_missing_file_returns_false(tmp_path):
    path = str(tmp_path / "connection.json")
    assert c.remove_connection(path) is False
    assert c.remove_connection(path, server_id="mine") is False


@pytest.mark.parametrize("content", ["{", "[1, 2]"])
def test_remove_with_server_id_keeps_damaged_file(tmp_path, content):
    path = tmp_path / "connection.json"
    path.write_text(content)
    assert c.remove_connection(str(path), server_id="mine") is False
    assert path.read_text() == content


def test_remove_unconditionally_removes_damaged_file(tmp_path):
    path = tmp_path / "connection.json"
    path.write_text("{")
    assert c.remove_connection(str(path)) is True
    assert not path.exists()


# ---------------------------------------------------------------- pid_alive

def test_pid_alive_for_own_pid():
    assert _info(host=socket.gethostname(), pid=os.getpid()).pid_alive() is True


def test_pid_alive_for_parent_pid():
    assert _info(host=socket.gethostname(), pid=os.getppid()).pid_alive() is True


def test_pid_alive_for_dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid no longer exists
    assert _info(host=socket.gethostname(), pid=child.pid).pid_alive() is False


def test_pid_alive_for_live_child_then_dead():
    child = subprocess.Popen(["sleep", "30"])
    try:
        info = _info(host=socket.gethostname(), pid=child.pid)
        assert info.pid_alive() is True
    finally:
        child.kill()
        child.wait()
    assert info.pid_alive() is False


def test_pid_alive_unknown_on_another_host():
    other = socket.gethostname() + "-elsewhere"
    assert _info(host=other, pid=os.getpid()).pid_alive() is None
    assert _info(host=other, pid=2 ** 22 + 1).pid_alive() is None


# ---------------------------------------------------------------- trust: who may have written the file


def test_read_refuses_a_fifo_without_blocking(tmp_path, deadline):
    path = tmp_path / "connection.json"
    os.mkfifo(path, 0o600)
    with pytest.raises(InsecurePath, match="FIFO, not a regular file") as info:
        c.read_connection(str(path))
    assert str(path) in str(info.value)


def test_read_refuses_a_symlink_even_to_our_own_file(tmp_path):
    real = tmp_path / "real.json"
    c.write_connection(str(real), _info())
    link = tmp_path / "connection.json"
    link.symlink_to(real)
    with pytest.raises(InsecurePath, match="symbolic link") as info:
        c.read_connection(str(link))
    assert str(link) in str(info.value)


def test_read_refuses_a_file_of_another_user(tmp_path):
    path = str(tmp_path / "connection.json")
    c.write_connection(path, _info())
    os.chown(path, OTHER_UID, -1)
    with pytest.raises(InsecurePath) as info:
        c.read_connection(path)
    message = str(info.value)
    assert f"connection file {path}" in message and f"uid {OTHER_UID}" in message and "0600" in message
    assert "not to you" in message


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_read_refuses_a_file_others_can_write(tmp_path, mode):
    path = str(tmp_path / "connection.json")
    c.write_connection(path, _info())
    os.chmod(path, mode)
    with pytest.raises(InsecurePath, match=f"mode {mode:04o}.*can write it.*chmod go-w {path}"):
        c.read_connection(path)


@pytest.mark.parametrize("change", ["owner", 0o775, 0o777, 0o1777])
def test_read_refuses_a_directory_others_own_or_can_write(tmp_path, change):
    directory = tmp_path / "server"
    path = str(directory / "connection.json")
    c.write_connection(path, _info())
    if change == "owner":
        os.chown(directory, OTHER_UID, -1)
    else:
        os.chmod(directory, change)
    with pytest.raises(InsecurePath, match=f"directory of connection file {directory} ") as info:
        c.read_connection(path)
    assert "refusing" in str(info.value)


def test_read_accepts_a_file_readable_by_others_in_a_0755_directory(tmp_path):
    directory = tmp_path / "server"
    directory.mkdir(mode=0o755)
    path = str(directory / "connection.json")
    c.write_connection(path, _info())
    os.chmod(path, 0o644)
    assert c.read_connection(path) == _info()


def test_insecure_path_is_a_configuration_error():
    assert issubclass(InsecurePath, ConfigurationError)


# ---------------------------------------------------------------- field types

@pytest.mark.parametrize("field, value, kind", [
    ("pid", "4242", "str"), ("pid", 4242.0, "float"), ("pid", True, "bool"), ("pid", None, "NoneType"),
    ("protocol", True, "bool"), ("protocol", "1", "str"), ("launcher_pid", "4200", "str"),
    ("launcher_pid", [4200], "list"), ("created", "yesterday", "str"), ("created", None, "NoneType"),
    ("address", 5, "int"), ("server_public_key", None, "NoneType"), ("host", {"a": 1}, "dict"),
    ("job_id", 1234, "int"), ("block_id", 0, "int"), ("server_id", 7, "int"), ("log_path", False, "bool"),
    ("block_token", 1, "int"), ("launch_id", 2, "int"),
])
def test_a_field_of_the_wrong_type_is_damage_naming_field_and_type(tmp_path, field, value, kind):
    path = tmp_path / "connection.json"
    data = dataclasses.asdict(_info())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigurationError) as info:
        c.read_connection(str(path))
    message = str(info.value)
    assert not isinstance(info.value, InsecurePath)
    assert str(path) in message and "damaged" in message
    assert f"field {field!r}" in message and f"not {kind}" in message


@pytest.mark.parametrize("field", ["pid", "launcher_pid"])
@pytest.mark.parametrize("value", [0, -1])
def test_a_pid_that_names_a_process_group_is_damage(tmp_path, field, value):
    path = tmp_path / "connection.json"
    path.write_text(json.dumps({**dataclasses.asdict(_info()), field: value}))
    with pytest.raises(ConfigurationError, match=f"field {field!r} must be a pid > 0"):
        c.read_connection(str(path))


def test_created_may_be_an_int_and_reads_as_float(tmp_path):
    path = tmp_path / "connection.json"
    path.write_text(json.dumps({**dataclasses.asdict(_info()), "created": 1732435200}))
    created = c.read_connection(str(path)).created
    assert created == 1732435200.0 and type(created) is float


def test_deeply_nested_json_is_damage_not_a_crash(tmp_path):
    path = tmp_path / "connection.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ConfigurationError, match="damaged"):
        c.read_connection(str(path))


def test_launch_id_round_trips_and_may_be_absent(tmp_path):
    path = str(tmp_path / "connection.json")
    c.write_connection(path, _info(launch_id="launch-7"))
    assert c.read_connection(path).launch_id == "launch-7"
    data = dataclasses.asdict(_info())
    for optional in ("launch_id", "block_token"):
        del data[optional]
    (tmp_path / "connection.json").write_text(json.dumps(data))
    read = c.read_connection(path)
    assert read.launch_id is None and read.block_token is None


# ---------------------------------------------------------------- private directory, exclusive write

@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_write_makes_missing_directories_private(tmp_path, mask):
    old = os.umask(mask)
    try:
        c.write_connection(str(tmp_path / "a" / "b" / "connection.json"), _info())
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a" / "b") == 0o700


def test_write_refuses_a_directory_others_can_write(tmp_path):
    directory = tmp_path / "shared"
    directory.mkdir()
    os.chmod(directory, 0o777)
    with pytest.raises(InsecurePath, match=str(directory)):
        c.write_connection(str(directory / "connection.json"), _info())
    assert os.listdir(directory) == []


def test_exclusive_write_publishes_when_nothing_is_there(tmp_path):
    path = str(tmp_path / "connection.json")
    c.write_connection(path, _info(), exclusive=True)
    assert c.read_connection(path) == _info()
    assert _mode(path) == 0o600
    assert os.listdir(tmp_path) == ["connection.json"]


def test_exclusive_write_keeps_an_existing_file(tmp_path):
    path = str(tmp_path / "connection.json")
    c.write_connection(path, _info(server_id="first"))
    with pytest.raises(FileExistsError):
        c.write_connection(path, _info(server_id="second"), exclusive=True)
    assert c.read_connection(path).server_id == "first"
    assert os.listdir(tmp_path) == ["connection.json"]


def test_exclusive_write_keeps_even_a_dangling_symlink(tmp_path):
    path = tmp_path / "connection.json"
    path.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(FileExistsError):
        c.write_connection(str(path), _info(), exclusive=True)
    assert not (tmp_path / "elsewhere.json").exists()


def test_servers_racing_for_one_path_publish_exactly_once(tmp_path):
    path = str(tmp_path / "connection.json")
    barrier = threading.Barrier(8)
    outcomes = {}

    def publish(index):
        barrier.wait()
        try:
            c.write_connection(path, _info(server_id=f"server-{index}"), exclusive=True)
            outcomes[index] = "published"
        except FileExistsError:
            outcomes[index] = "lost"

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    [winner] = [i for i, outcome in outcomes.items() if outcome == "published"]
    assert len(outcomes) == 8
    assert c.read_connection(path).server_id == f"server-{winner}"
    assert os.listdir(tmp_path) == ["connection.json"]


# ---------------------------------------------------------------- remove: never trips over what it refuses

def test_remove_keeps_a_file_of_another_user(tmp_path):
    path = str(tmp_path / "connection.json")
    c.write_connection(path, _info(server_id="mine"))
    os.chown(path, OTHER_UID, -1)
    assert c.remove_connection(path, server_id="mine") is False
    assert c.remove_connection(path) is False
    assert os.path.exists(path)


def test_remove_with_server_id_keeps_a_mistyped_file(tmp_path):
    path = tmp_path / "connection.json"
    path.write_text(json.dumps({**dataclasses.asdict(_info(server_id="mine")), "pid": "1"}))
    assert c.remove_connection(str(path), server_id="mine") is False
    assert path.exists()


def test_remove_with_server_id_does_not_block_on_a_fifo(tmp_path, deadline):
    path = tmp_path / "connection.json"
    os.mkfifo(path, 0o600)
    assert c.remove_connection(str(path), server_id="mine") is False
    assert path.exists()
