"""``$PARSL_MPI_PREFIX`` (task/mpirun.py) against a real CURVE ROUTER standing in for the block's
backend socket: what it asks for, how it turns ``RanksDone`` into output and an exit code, and
what it does outside an MPI task, when no server answers and when the link drops."""
import os
import socket
import subprocess
import sys
import time

import pytest

from parsl_dragon.task import mpirun
from parsl_dragon.task.mpi_env import read_report
from parsl_dragon.vocabulary import (
    DEFAULT_TIMEOUT_MS,
    ENV_RANK_REPORT,
    ENV_TASK,
    ENV_TIMEOUT,
    ENV_WORKER_ADDRESS,
    ENV_WORKER_SECRET,
    ENV_WORKER_SERVER_KEY,
    NO_LIMIT,
)
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.security import ephemeral_pair

TASK_ID = 7
SHORT_TIMEOUT_MS = "200"  # PARSL_DRAGON_TIMEOUT for the tests where no server answers the handshake
RUN_S = 10.0  # the most a run of the real entry point may take (it starts in ~1 s)
GIVE_UP_S = 3.0  # the most a run where no server answers, or the link drops, may take


@pytest.fixture
def server(worker_link_server, monkeypatch, tmp_path):
    """``worker_link_server`` (conftest.py), with the variables of an MPI task in ``os.environ`` too."""
    monkeypatch.setenv(ENV_TASK, str(TASK_ID))
    monkeypatch.setenv(ENV_RANK_REPORT, str(tmp_path / "ranks.json"))
    monkeypatch.delenv(ENV_TIMEOUT, raising=False)
    return worker_link_server


def done(codes, labels=None, output_dir="", error=""):
    labels = [f"rank {i}" for i in range(len(codes))] if labels is None else labels
    return p.RanksDone(task_id=TASK_ID, exit_codes=codes, labels=labels, output_dir=output_dir, error=error)


def rank_output(directory, files):
    """Write the files the backend leaves per rank (``rank-N.out``, ``mpiexec.err`` ...)."""
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return str(directory)


# ---- the request ----------------------------------------------------------------------------

def test_the_request_names_the_task_the_command_and_the_cwd_and_hides_the_worker_secret(
        server, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIM_INPUT", "deck.in")
    server.answer(done([0]))
    assert mpirun.main(["./sim", "--step", "1"]) == 0
    [request] = server.requests
    assert isinstance(request, p.LaunchRanks)
    assert (request.task_id, request.argv, request.cwd) == (TASK_ID, ["./sim", "--step", "1"], str(tmp_path))
    assert request.env["SIM_INPUT"] == "deck.in" and request.env[ENV_TASK] == str(TASK_ID)
    assert ENV_WORKER_SECRET not in request.env
    assert server.env[ENV_WORKER_SECRET] not in request.env.values()
    assert request.env[ENV_WORKER_ADDRESS] == server.env[ENV_WORKER_ADDRESS]


def test_messages_before_ranks_done_are_ignored(server, capsys):
    server.answer(p.Heartbeat(sent=0.0), done([0, 5]))
    assert mpirun.main(["true"]) == 5


# ---- exit code and rank report -------------------------------------------------------------

@pytest.mark.parametrize("codes, expected, failed", [
    ([0, 0, 0], 0, []),
    ([0, 3, 5], 3, [("rank 1", 3), ("rank 2", 5)]),
    ([0, -9], 1, [("rank 1", -9)]),      # killed by a signal: not an exit status
    ([-2, 0], 1, [("rank 0", -2)]),      # Dragon's walltime code
    ([256], 1, [("rank 0", 256)]),       # out of range for an exit status
    ([255], 255, [("rank 0", 255)]),
], ids=["all-zero", "first-failing-rank", "signal", "walltime", "too-large", "largest"])
def test_exit_code_is_the_first_failing_ranks_and_the_report_names_every_failing_rank(
        server, codes, expected, failed, capsys):
    server.answer(done(codes))
    assert mpirun.main(["./sim"]) == expected
    assert read_report(os.environ[ENV_RANK_REPORT]) == (failed, "")


def test_without_a_report_path_nothing_is_written(server, monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_RANK_REPORT)
    before = set(os.listdir(tmp_path))
    assert mpirun.exit_code(done([0, 3])) == 3
    assert set(os.listdir(tmp_path)) == before


def test_an_error_goes_to_stderr_and_the_report_and_fails(server, capsys):
    server.answer(done([], labels=[], error="pmi='pmix' needs a PMIx library"))
    assert mpirun.main(["./sim"]) == 1
    assert capsys.readouterr().err == "parsl_dragon.task.mpirun: pmi='pmix' needs a PMIx library\n"
    assert read_report(os.environ[ENV_RANK_REPORT]) == ([], "pmi='pmix' needs a PMIx library")


def test_an_error_reply_removes_the_output_directory_the_server_made(server, tmp_path, capsys):
    output = rank_output(tmp_path / "out", {"mpiexec.err": "half a launch\n"})
    server.answer(done([], labels=[], output_dir=output, error="launching the ranks failed: OSError()"))
    assert mpirun.main(["./sim"]) == 1
    assert not os.path.exists(output)
    assert capsys.readouterr() == ("", "parsl_dragon.task.mpirun: launching the ranks failed: OSError()\n")


# ---- output relay --------------------------------------------------------------------------

def test_each_ranks_output_is_relayed_with_its_label_and_the_directory_removed(server, tmp_path, capsys):
    output = rank_output(tmp_path / "out", {"rank-0.out": "hello\nworld", "rank-0.err": "warn\n",
                                            "rank-1.out": "from one\n"})  # rank-1.err missing: skipped
    server.answer(done([0, 0], output_dir=output))
    assert mpirun.main(["./sim"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "[rank 0] hello\n[rank 0] world\n[rank 1] from one\n"
    assert captured.err == "[rank 0] warn\n"
    assert not os.path.exists(output)


def test_the_mpiexec_backends_output_is_labelled_mpiexec(server, tmp_path, capsys):
    output = rank_output(tmp_path / "out", {"mpiexec.out": "rank 0 of 2\nrank 1 of 2\n",
                                            "mpiexec.err": "abort\n", "rank-0.out": "not ours\n"})
    server.answer(done([4], labels=["mpiexec"], output_dir=output))
    assert mpirun.main(["./sim"]) == 4
    captured = capsys.readouterr()
    assert captured.out == "[mpiexec] rank 0 of 2\n[mpiexec] rank 1 of 2\n"
    assert captured.err == "[mpiexec] abort\n"
    assert read_report(os.environ[ENV_RANK_REPORT]) == ([("mpiexec", 4)], "")


def test_undecodable_output_is_relayed_with_replacement_characters(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "rank-0.out").write_bytes(b"caf\xe9\n")
    mpirun.relay_output(done([0], output_dir=str(output)))
    assert capsys.readouterr().out == "[rank 0] caf\ufffd\n"


# ---- outside an MPI task -------------------------------------------------------------------

LINK = (ENV_WORKER_ADDRESS, ENV_WORKER_SECRET, ENV_WORKER_SERVER_KEY)


@pytest.mark.parametrize("missing, named", [
    ([ENV_TASK], "PARSL_DRAGON_TASK is not set"),
    ([ENV_WORKER_ADDRESS], "PARSL_DRAGON_WORKER_ADDRESS is not set"),
    ([ENV_WORKER_SECRET], "PARSL_DRAGON_WORKER_SECRET is not set"),
    ([ENV_WORKER_SECRET, ENV_WORKER_SERVER_KEY],
     "PARSL_DRAGON_WORKER_SECRET and PARSL_DRAGON_WORKER_SERVER_KEY are not set"),
    ([ENV_TASK, *LINK], "PARSL_DRAGON_TASK, PARSL_DRAGON_WORKER_ADDRESS, PARSL_DRAGON_WORKER_SECRET and "
                        "PARSL_DRAGON_WORKER_SERVER_KEY are not set"),
], ids=["task", "address", "secret", "keys", "all"])
def test_outside_an_mpi_task_it_names_what_is_missing_and_asks_nothing(server, monkeypatch, capsys, missing, named):
    for name in missing:
        monkeypatch.delenv(name)
    assert mpirun.main(["./sim"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"parsl_dragon.task.mpirun: not inside an MPI task of DragonExecutor ({named}); ")
    # without a task id the app lacks MPI keys; with one, the link variables were lost on the way
    assert ("parsl_resource_specification" in err) == (ENV_TASK in missing)
    assert ("environment the worker gave the app" in err) == (ENV_TASK not in missing)
    assert read_report(os.environ[ENV_RANK_REPORT]) == ([], err.split(": ", 1)[1].rstrip("\n"))
    assert not server.sock.poll(50)


def test_an_empty_variable_counts_as_missing(server, monkeypatch, capsys):
    monkeypatch.setenv(ENV_WORKER_SERVER_KEY, "")
    assert mpirun.main(["./sim"]) == 2
    assert "(PARSL_DRAGON_WORKER_SERVER_KEY is not set)" in capsys.readouterr().err


@pytest.mark.parametrize("name, value, expected", [
    (ENV_TASK, "seven", "PARSL_DRAGON_TASK must be the server's id of the task, got 'seven'"),
    (ENV_TIMEOUT, "soon", "environment variable PARSL_DRAGON_TIMEOUT must be an integer number of milliseconds"),
    (ENV_TIMEOUT, "0", "environment variable PARSL_DRAGON_TIMEOUT must be > 0 (milliseconds) or -1"),
    (ENV_WORKER_SECRET, "not-a-key", "cannot open the worker link to 'tcp://127.0.0.1:"),
    (ENV_WORKER_ADDRESS, "nowhere", "cannot open the worker link to 'nowhere'"),
], ids=["task-id", "timeout-word", "timeout-zero", "secret", "address"])
def test_a_variable_that_cannot_be_used_is_named_and_nothing_is_asked(
        server, monkeypatch, capsys, name, value, expected):
    monkeypatch.setenv(name, value)
    assert mpirun.main(["./sim"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parsl_dragon.task.mpirun: ") and expected in err
    assert not server.sock.poll(50)


def test_a_rank_report_that_cannot_be_written_is_said_after_the_reason(server, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(ENV_WORKER_ADDRESS)
    monkeypatch.setenv(ENV_RANK_REPORT, str(tmp_path / "gone" / "ranks.json"))  # its task is over
    assert mpirun.main(["./sim"]) == 2
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith("parsl_dragon.task.mpirun: not inside an MPI task of DragonExecutor")
    assert second == (f"parsl_dragon.task.mpirun: cannot record this in the rank report {tmp_path}/gone/ranks.json: "
                      "No such file or directory")


def test_without_a_command_it_prints_its_usage(server, capsys):
    assert mpirun.main([]) == 2
    assert capsys.readouterr().err.startswith("usage: $PARSL_MPI_PREFIX COMMAND")


# ---- a server that is not there, or goes away ----------------------------------------------

@pytest.mark.parametrize("env, expected", [
    ({}, DEFAULT_TIMEOUT_MS), ({ENV_TIMEOUT: " "}, DEFAULT_TIMEOUT_MS),
    ({ENV_TIMEOUT: "2500"}, 2500), ({ENV_TIMEOUT: "-1"}, NO_LIMIT),
], ids=["unset", "blank", "set", "no-limit"])
def test_the_handshake_bound_is_parsl_dragon_timeout_or_the_default(env, expected):
    assert mpirun.link_timeout_ms(env) == expected


def test_the_bound_is_on_the_handshake_not_on_the_ranks(server, monkeypatch, capsys, deadline):
    monkeypatch.setenv(ENV_TIMEOUT, SHORT_TIMEOUT_MS)
    server.answer(done([0]), after_s=0.6)  # ranks that run three times longer than the bound
    assert mpirun.main(["./sim"]) == 0


def test_a_wrong_server_key_gives_up_after_the_bound_naming_the_address(server, monkeypatch, capsys, deadline):
    monkeypatch.setenv(ENV_TIMEOUT, SHORT_TIMEOUT_MS)
    monkeypatch.setenv(ENV_WORKER_SERVER_KEY, ephemeral_pair().public.decode())  # the handshake cannot complete
    began = time.monotonic()
    assert mpirun.main(["./sim"]) == 1
    assert 0.2 <= time.monotonic() - began < GIVE_UP_S
    err = capsys.readouterr().err
    assert err.startswith(f"parsl_dragon.task.mpirun: no answer from the block's server at "
                          f"{server.env[ENV_WORKER_ADDRESS]} within 0.2 s (the CURVE handshake did not complete)")
    assert "PARSL_DRAGON_WORKER_SERVER_KEY" in err and "raise PARSL_DRAGON_TIMEOUT" in err
    assert read_report(os.environ[ENV_RANK_REPORT])[1].startswith("no answer from the block's server")
    assert not server.sock.poll(0)


def test_a_refused_key_fails_at_once_without_waiting_for_the_bound(server, monkeypatch, capsys, deadline):
    monkeypatch.setenv(ENV_WORKER_SECRET, ephemeral_pair().secret.decode())  # not a key the server admits
    began = time.monotonic()
    assert mpirun.main(["./sim"]) == 1
    assert time.monotonic() - began < GIVE_UP_S  # the bound is the default 30 s
    err = capsys.readouterr().err
    assert err == (f"parsl_dragon.task.mpirun: the block's server at {server.env[ENV_WORKER_ADDRESS]} refused this "
                   "task's key (PARSL_DRAGON_WORKER_SECRET): the worker-link variables are not those of that "
                   "server (left from an earlier one?)\n")
    assert read_report(os.environ[ENV_RANK_REPORT]) == ([], err.split(": ", 1)[1].rstrip("\n"))


def test_a_link_lost_while_the_ranks_run_fails_at_once(server, capsys, deadline):
    server.vanish()  # takes the request, then its socket closes: the server stopped
    began = time.monotonic()
    assert mpirun.main(["./sim"]) == 1
    assert time.monotonic() - began < GIVE_UP_S
    assert [type(r) for r in server.requests] == [p.LaunchRanks]
    err = capsys.readouterr().err
    assert err == (f"parsl_dragon.task.mpirun: lost the link to the block's server at "
                   f"{server.env[ENV_WORKER_ADDRESS]} while the ranks of task {TASK_ID} ran: the server is gone "
                   "or restarted the link, so their outcome can no longer reach this task\n")
    assert read_report(os.environ[ENV_RANK_REPORT]) == ([], err.split(": ", 1)[1].rstrip("\n"))


# ---- the real entry point ------------------------------------------------------------------

def run_entry_point(args, timeout):
    return subprocess.run([sys.executable, "-m", "parsl_dragon.task.mpirun", *args], env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


def test_python_m_parsl_dragon_task_mpirun_relays_and_exits_with_the_failing_ranks_code(server, tmp_path):
    output = rank_output(tmp_path / "out", {"rank-0.out": "hello\n", "rank-1.err": "oops\n"})
    server.answer(done([0, 3], output_dir=output))
    proc = run_entry_point(["./sim", "-n", "2"], timeout=RUN_S)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "[rank 0] hello\n", "[rank 1] oops\n")
    assert [r.argv for r in server.requests] == [["./sim", "-n", "2"]]
    assert read_report(os.environ[ENV_RANK_REPORT]) == ([("rank 1", 3)], "")


def _unused_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_without_a_server_it_gives_up_instead_of_waiting_forever(monkeypatch, tmp_path):
    keys, server_keys = ephemeral_pair(), ephemeral_pair()
    address = f"tcp://127.0.0.1:{_unused_port()}"  # nothing listens there
    monkeypatch.setenv(ENV_WORKER_ADDRESS, address)
    monkeypatch.setenv(ENV_WORKER_SECRET, keys.secret.decode())
    monkeypatch.setenv(ENV_WORKER_SERVER_KEY, server_keys.public.decode())
    monkeypatch.setenv(ENV_TASK, str(TASK_ID))
    monkeypatch.setenv(ENV_RANK_REPORT, str(tmp_path / "ranks.json"))
    monkeypatch.setenv(ENV_TIMEOUT, SHORT_TIMEOUT_MS)
    proc = run_entry_point(["./sim"], timeout=GIVE_UP_S)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"parsl_dragon.task.mpirun: no answer from the block's server at {address} "
                                  "within 0.2 s")
    assert read_report(str(tmp_path / "ranks.json"))[1].startswith(f"no answer from the block's server at {address}")
