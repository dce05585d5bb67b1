"""Unit tests for parsl_dragon.driver.settings: precedence, defaults and validation."""
from __future__ import annotations

import os

import pytest

from parsl_dragon import vocabulary as v
from parsl_dragon.driver import settings as s
from parsl_dragon.errors import ConfigurationError, DragonExecutorError

# ---------------------------------------------------------------- defaults


def test_defaults_with_empty_environment():
    result = s.resolve_settings(env={})
    assert result.server_path is None
    assert result.transport == "auto"
    assert result.startup_timeout_ms == 300000
    assert result.timeout_ms == 30000
    assert result.key_path == os.path.join(os.path.expanduser("~"), ".parsl_dragon", "keys")
    assert result.timeout_s == 30.0
    assert result.startup_timeout_s == 300.0


def test_default_constants():
    assert v.DEFAULT_STARTUP_TIMEOUT_MS == 300_000
    assert v.DEFAULT_TIMEOUT_MS == 30_000
    assert v.DEFAULT_TRANSPORT == "auto"
    assert s.default_key_path().endswith(os.path.join(".parsl_dragon", "keys"))
    assert os.path.isabs(s.default_key_path())


def test_default_key_path_follows_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert s.default_key_path() == str(tmp_path / ".parsl_dragon" / "keys")
    assert s.resolve_settings(env={}).key_path == str(tmp_path / ".parsl_dragon" / "keys")


def test_unrelated_environment_is_ignored():
    env = {"PARSL_DRAGON_TIMEOUTS": "1", "TIMEOUT": "5", "PARSL_DRAGON_transport": "tcp"}
    assert s.resolve_settings(env=env) == s.resolve_settings(env={})


def test_blank_environment_values_fall_back_to_defaults():
    env = {v.ENV_SERVER_PATH: "", v.ENV_TRANSPORT: "  ", v.ENV_STARTUP_TIMEOUT: "",
           v.ENV_TIMEOUT: "\t", v.ENV_KEY_PATH: " "}
    assert s.resolve_settings(env=env) == s.resolve_settings(env={})


def test_explicit_env_mapping_is_used_instead_of_os_environ(monkeypatch):
    monkeypatch.setenv(v.ENV_TIMEOUT, "1234")
    assert s.resolve_settings(env={}).timeout_ms == 30000
    assert s.resolve_settings().timeout_ms == 1234  # env=None reads os.environ


# ---------------------------------------------------------------- precedence

# (argument name, env var, argument value, env value, expected from arg, expected from env, default)
CASES = [
    ("transport", v.ENV_TRANSPORT, "hsta", "tcp", "hsta", "tcp", "auto"),
    ("startup_timeout_ms", v.ENV_STARTUP_TIMEOUT, 1000, "2000", 1000, 2000, 300000),
    ("timeout_ms", v.ENV_TIMEOUT, 500, "700", 500, 700, 30000),
    ("rank_startup_timeout_ms", v.ENV_RANK_STARTUP_TIMEOUT, 900, "1200", 900, 1200, 60000),
    ("key_path", v.ENV_KEY_PATH, "/arg/keys", "/env/keys", "/arg/keys", "/env/keys",
     os.path.join(os.path.expanduser("~"), ".parsl_dragon", "keys")),
    ("server_path", v.ENV_SERVER_PATH, "/arg/server", "/env/server", "/arg/server", "/env/server", None),
]


@pytest.mark.parametrize("arg,var,arg_value,env_value,from_arg,from_env,default", CASES,
                         ids=[c[0] for c in CASES])
def test_argument_beats_environment(arg, var, arg_value, env_value, from_arg, from_env, default):
    result = s.resolve_settings(env={var: env_value}, **{arg: arg_value})
    assert getattr(result, arg) == from_arg


@pytest.mark.parametrize("arg,var,arg_value,env_value,from_arg,from_env,default", CASES,
                         ids=[c[0] for c in CASES])
def test_environment_beats_default(arg, var, arg_value, env_value, from_arg, from_env, default):
    result = s.resolve_settings(env={var: env_value})
    assert getattr(result, arg) == from_env
    assert from_env != default


@pytest.mark.parametrize("arg,var,arg_value,env_value,from_arg,from_env,default", CASES,
                         ids=[c[0] for c in CASES])
def test_default_when_neither(arg, var, arg_value, env_value, from_arg, from_env, default):
    other_vars = {c[1]: c[3] for c in CASES if c[1] != var}
    result = s.resolve_settings(env=other_vars)
    assert getattr(result, arg) == default


def test_settings_are_independent_of_each_other():
    env = {v.ENV_TRANSPORT: "tcp", v.ENV_TIMEOUT: "100"}
    result = s.resolve_settings(env=env, startup_timeout_ms=9, key_path="/k")
    assert (result.transport, result.timeout_ms, result.startup_timeout_ms, result.key_path) == \
        ("tcp", 100, 9, "/k")
    assert result.server_path is None


def test_argument_zero_is_not_treated_as_missing():
    # 0 is an explicit (invalid) argument; it must not silently fall back to env or default
    with pytest.raises(ConfigurationError):
        s.resolve_settings(env={v.ENV_TIMEOUT: "700"}, timeout_ms=0)


def test_invalid_environment_is_not_consulted_when_argument_given():
    result = s.resolve_settings(env={v.ENV_TIMEOUT: "garbage", v.ENV_TRANSPORT: "udp"},
                                timeout_ms=10, transport="tcp")
    assert result.timeout_ms == 10
    assert result.transport == "tcp"


# ---------------------------------------------------------------- values

def test_minus_one_means_forever():
    result = s.resolve_settings(env={}, timeout_ms=-1, startup_timeout_ms=-1)
    assert result.timeout_ms == -1
    assert result.startup_timeout_ms == -1
    assert result.timeout_s is None
    assert result.startup_timeout_s is None


def test_minus_one_from_environment_means_forever():
    result = s.resolve_settings(env={v.ENV_TIMEOUT: "-1", v.ENV_STARTUP_TIMEOUT: " -1 "})
    assert result.timeout_s is None
    assert result.startup_timeout_s is None


def test_rank_startup_timeout_in_seconds_and_forever():
    assert s.resolve_settings(env={}).rank_startup_timeout_ms == 60_000
    assert s.resolve_settings(env={}, rank_startup_timeout_ms=2500).rank_startup_timeout_ms == 2500
    assert s.resolve_settings(env={v.ENV_RANK_STARTUP_TIMEOUT: "-1"}).rank_startup_timeout_ms == v.NO_LIMIT


def test_timeouts_converted_to_seconds():
    result = s.resolve_settings(env={}, timeout_ms=1500, startup_timeout_ms=1)
    assert result.timeout_s == 1.5
    assert result.startup_timeout_s == 0.001


def test_timeout_strings_are_stripped_and_parsed():
    assert s.resolve_settings(env={v.ENV_TIMEOUT: " 42 "}).timeout_ms == 42
    assert s.resolve_settings(env={}, timeout_ms="17").timeout_ms == 17


@pytest.mark.parametrize("value", ["HSTA", " Tcp ", "AUTO"])
def test_transport_is_case_insensitive(value):
    assert s.resolve_settings(env={}, transport=value).transport == value.strip().lower()
    assert s.resolve_settings(env={v.ENV_TRANSPORT: value}).transport == value.strip().lower()


def test_paths_are_expanded_and_made_absolute(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = s.resolve_settings(env={v.ENV_SERVER_PATH: "relative/server"}, key_path="~/mykeys")
    assert result.key_path == str(tmp_path / "mykeys")
    assert result.server_path == str(tmp_path / "relative" / "server")


def test_settings_are_frozen():
    result = s.resolve_settings(env={})
    with pytest.raises(Exception):
        result.timeout_ms = 5  # type: ignore[misc]


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("value", [0, -5, "abc", "1.5", "", -2])
@pytest.mark.parametrize("arg,var", [("timeout_ms", v.ENV_TIMEOUT),
                                     ("startup_timeout_ms", v.ENV_STARTUP_TIMEOUT),
                                     ("rank_startup_timeout_ms", v.ENV_RANK_STARTUP_TIMEOUT)])
def test_invalid_timeout_argument_names_the_argument(arg, var, value):
    with pytest.raises(ConfigurationError) as info:
        s.resolve_settings(env={}, **{arg: value})
    message = str(info.value)
    assert message.startswith(f"argument {arg} must")
    assert repr(value) in message or str(value) in message


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5", "30s"])
@pytest.mark.parametrize("var", [v.ENV_TIMEOUT, v.ENV_STARTUP_TIMEOUT, v.ENV_RANK_STARTUP_TIMEOUT])
def test_invalid_timeout_variable_names_the_variable(var, value):
    with pytest.raises(ConfigurationError) as info:
        s.resolve_settings(env={var: value})
    assert str(info.value).startswith(f"environment variable {var} must")
    assert value in str(info.value)


def test_timeout_error_messages_explain_the_rule():
    with pytest.raises(ConfigurationError, match=r"> 0 \(milliseconds\) or -1"):
        s.resolve_settings(env={}, timeout_ms=0)
    with pytest.raises(ConfigurationError, match="integer number of milliseconds or -1"):
        s.resolve_settings(env={}, timeout_ms="abc")


@pytest.mark.parametrize("value", ["udp", "", "ib", "tcp4"])
def test_invalid_transport_argument(value):
    with pytest.raises(ConfigurationError) as info:
        s.resolve_settings(env={}, transport=value)
    assert str(info.value).startswith("argument transport must be one of")
    assert "hsta, tcp, auto" in str(info.value)
    assert repr(value) in str(info.value)


def test_invalid_transport_variable():
    with pytest.raises(ConfigurationError) as info:
        s.resolve_settings(env={v.ENV_TRANSPORT: "udp"})
    assert "environment variable PARSL_DRAGON_TRANSPORT" in str(info.value)
    assert "'udp'" in str(info.value)


@pytest.mark.parametrize("arg", ["key_path", "server_path"])
def test_empty_path_argument_is_rejected(arg):
    with pytest.raises(ConfigurationError, match=f"^argument {arg} must be a non-empty path"):
        s.resolve_settings(env={}, **{arg: "  "})


def test_configuration_error_is_a_dragon_executor_error():
    with pytest.raises(DragonExecutorError):
        s.resolve_settings(env={v.ENV_TIMEOUT: "0"})


def test_parse_helpers_directly():
    assert v.parse_timeout_ms(5, "x") == 5
    assert v.parse_timeout_ms("-1", "x") == -1
    assert v.parse_transport("TCP", "x") == "tcp"
    with pytest.raises(ConfigurationError, match="^my-name must"):
        v.parse_timeout_ms(0, "my-name")
    with pytest.raises(ConfigurationError, match="^my-name must"):
        v.parse_transport("udp", "my-name")


def test_owner_timeout_follows_argument_environment_default():
    DEFAULT_OWNER_TIMEOUT_MS, ENV_OWNER_TIMEOUT = v.DEFAULT_OWNER_TIMEOUT_MS, v.ENV_OWNER_TIMEOUT
    assert s.resolve_settings(env={}).owner_timeout_ms == DEFAULT_OWNER_TIMEOUT_MS == 60_000
    assert s.resolve_settings(env={ENV_OWNER_TIMEOUT: "-1"}).owner_timeout_ms == v.NO_LIMIT
    assert s.resolve_settings(owner_timeout_ms=5000, env={ENV_OWNER_TIMEOUT: "-1"}).owner_timeout_ms == 5000
    with pytest.raises(ConfigurationError, match="owner_timeout_ms"):
        s.resolve_settings(owner_timeout_ms=0, env={})


def test_max_payload_bytes_argument_environment_default_and_refusals(monkeypatch):
    from parsl_dragon.host import memory
    both = {"PARSL_DRAGON_MAX_PAYLOAD": "8192"}
    assert s.resolve_settings(max_payload_bytes=4096, env=both).max_payload_bytes == 4096
    assert s.resolve_settings(env={"PARSL_DRAGON_MAX_PAYLOAD": "8192"}).max_payload_bytes == 8192
    total = memory.total_memory_bytes()
    assert total and s.resolve_settings(env={}).max_payload_bytes == total // 4, "a quarter of this host's memory"
    for bad in ("0", "-5", "lots"):
        with pytest.raises(ConfigurationError, match="PARSL_DRAGON_MAX_PAYLOAD"):
            s.resolve_settings(env={"PARSL_DRAGON_MAX_PAYLOAD": bad})
    monkeypatch.setattr(memory, "total_memory_bytes", lambda: None)
    assert memory.default_max_payload_bytes() == memory.FALLBACK_MEMORY_BYTES // 4


def test_total_memory_is_read_from_meminfo(tmp_path):
    from parsl_dragon.host import memory
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683372 kB\nMemFree:  1 kB\n")
    assert memory.total_memory_bytes(str(meminfo)) == 24683372 * 1024
