"""Unit tests for parsl_dragon.task.mpi_env: the MPI task's environment and its rank report file."""
from __future__ import annotations

import json
import os
import stat

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.spec import normalize_spec
from parsl_dragon.task import mpi_env
from parsl_dragon.vocabulary import ENV_RANK_REPORT, ENV_TASK

SPEC = normalize_spec({"num_nodes": 2, "ranks_per_node": 2})
PLACEMENT = Placement(7, ("n1", "n2"), ((0, 1), (0, 1)), ((), ()))


def test_the_task_sees_htex_variables_from_its_spec_and_placement():
    env = mpi_env.task_environment(7, SPEC, PLACEMENT, "/r/ranks.json")
    assert {k: env[k] for k in ("PARSL_NUM_NODES", "PARSL_RANKS_PER_NODE", "PARSL_NUM_RANKS", "PARSL_MPI_NODELIST")} \
        == {"PARSL_NUM_NODES": "2", "PARSL_RANKS_PER_NODE": "2", "PARSL_NUM_RANKS": "4", "PARSL_MPI_NODELIST": "n1,n2"}
    assert env[ENV_TASK] == "7" and env[ENV_RANK_REPORT] == "/r/ranks.json"
    assert env["PARSL_MPI_PREFIX"].endswith(" -m parsl_dragon.task.mpirun")


def test_report_lives_in_a_new_private_directory_removed_afterwards():
    with mpi_env.mpi_task(7, SPEC, PLACEMENT) as report:
        directory = os.path.dirname(report)
        assert os.environ[ENV_RANK_REPORT] == report and os.environ[ENV_TASK] == "7"
        assert os.path.basename(directory).startswith("parsl-dragon-ranks-7-")
        st = os.lstat(directory)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
        assert os.listdir(directory) == []  # the report is made new by the launch that writes it
        mpi_env.write_report(report, [("rank 1", 3)])
    assert not os.path.exists(directory)
    assert ENV_RANK_REPORT not in os.environ


def test_write_and_read_round_trip_and_read_removes_the_report(tmp_path):
    report = str(tmp_path / "ranks.json")
    mpi_env.write_report(report, [("rank 0", 1), ("rank 3", 139)], error="")
    assert stat.S_IMODE(os.stat(report).st_mode) & 0o077 == 0
    assert mpi_env.read_report(report) == ([("rank 0", 1), ("rank 3", 139)], "")
    assert os.listdir(tmp_path) == []


def test_write_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    report = tmp_path / "ranks.json"
    report.symlink_to(victim)
    mpi_env.write_report(str(report), [("rank 0", 2)], error="boom")
    assert victim.read_text() == "precious\n"
    assert not report.is_symlink() and json.loads(report.read_text()) == {"failed": [["rank 0", 2]], "error": "boom"}
    assert sorted(os.listdir(tmp_path)) == ["ranks.json", "victim"]  # no temporary file left


def test_read_does_not_follow_a_planted_symlink(tmp_path):
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({"failed": [["rank 9", 9]], "error": "forged"}))
    report = tmp_path / "ranks.json"
    report.symlink_to(forged)
    assert mpi_env.read_report(str(report)) == ([], "")
    assert not os.path.lexists(report) and forged.exists()


def test_read_of_a_missing_or_malformed_report_is_empty(tmp_path):
    report = tmp_path / "ranks.json"
    assert mpi_env.read_report(str(report)) == ([], "")
    for content in ("{", "[]", '{"failed": [1]}', '{"failed": [["a", "x"]]}', '{"failed": 5}'):
        report.write_text(content)
        assert mpi_env.read_report(str(report)) == ([], ""), content
