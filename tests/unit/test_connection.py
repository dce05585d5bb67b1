"""Unit tests for parsl_dragon.connection: the server's connection file."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from parsl_dragon import connection as c
from parsl_dragon.errors import ConfigurationError


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
