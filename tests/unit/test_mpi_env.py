"""Unit tests for parsl_dragon.task.mpi_env (the MPI task's environment and rank report) and
parsl_dragon.task.prefix (what ``$PARSL_MPI_PREFIX`` is), with the real ``prefix.sh``."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time

import pytest

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.spec import normalize_spec
from parsl_dragon.task import mpi_env, prefix
from parsl_dragon.vocabulary import ENV_PMI_PROBLEM, ENV_RANK_DIR, ENV_RANK_REPORT, ENV_TASK, ENV_WORKER_PID

SPEC = normalize_spec({"num_nodes": 2, "ranks_per_node": 2, "pmi": "none"})
MPIEXEC_SPEC = normalize_spec({"num_nodes": 2, "ranks_per_node": 2, "pmi": "mpiexec", "launcher_options": "-v -x A"})
PLACEMENT = Placement(7, ("n1", "n2"), ((0, 1), (0, 1)), ((), ()))


def test_the_task_sees_htex_variables_and_its_private_directory():
    with mpi_env.mpi_task(7, SPEC, PLACEMENT) as task:
        env = dict(os.environ)
        st = os.lstat(task.directory)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
        assert os.path.basename(task.directory).startswith("parsl-dragon-ranks-7-")
    assert {k: env[k] for k in ("PARSL_NUM_NODES", "PARSL_RANKS_PER_NODE", "PARSL_NUM_RANKS", "PARSL_MPI_NODELIST")} \
        == {"PARSL_NUM_NODES": "2", "PARSL_RANKS_PER_NODE": "2", "PARSL_NUM_RANKS": "4", "PARSL_MPI_NODELIST": "n1,n2"}
    assert env[ENV_TASK] == "7" and env[ENV_RANK_DIR] == task.directory and env[ENV_WORKER_PID] == str(os.getpid())
    assert env[ENV_RANK_REPORT] == task.report and os.path.dirname(task.report) == task.directory
    assert env["PARSL_MPI_PREFIX"].split()[1:] == [prefix.SCRIPT, "dragon"] and ENV_PMI_PROBLEM not in env
    assert not os.path.exists(task.directory) and ENV_RANK_DIR not in os.environ


def test_inside_a_slurm_job_the_task_s_sruns_may_overlap_the_runtime_s_step(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with mpi_env.mpi_task(8, SPEC, PLACEMENT):
        assert "SLURM_OVERLAP" not in os.environ
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with mpi_env.mpi_task(8, SPEC, PLACEMENT):
        assert os.environ["SLURM_OVERLAP"] == "1"
    assert "SLURM_OVERLAP" not in os.environ


def test_the_prefix_script_reads_the_variables_the_worker_sets():
    text = open(prefix.SCRIPT).read()
    for name in (ENV_RANK_DIR, ENV_WORKER_PID, ENV_RANK_REPORT, ENV_PMI_PROBLEM):
        assert f"${name}" in text, name
    assert f'"$dir/{mpi_env.LAUNCH_FIFO}"' in text and mpi_env.ERROR_LABEL + "\\t" in text


def test_report_lines_round_trip_and_reading_removes_the_report(tmp_path):
    report = str(tmp_path / "ranks.report")
    mpi_env.note_failures(report, [("rank 0", 1), ("rank 3", 139)])
    mpi_env.note_failures(report, [], error="no\tluck\non two lines")
    assert stat.S_IMODE(os.stat(report).st_mode) & 0o077 == 0
    assert mpi_env.read_report(report) == ([("rank 0", 1), ("rank 3", 139)], "no luck on two lines")
    assert os.listdir(tmp_path) == []


def test_notes_and_reads_never_follow_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("7\trank 9\n")
    report = tmp_path / "ranks.report"
    report.symlink_to(victim)
    with pytest.raises(OSError):
        mpi_env.note_failures(str(report), [("rank 0", 2)])
    assert mpi_env.read_report(str(report)) == ([], "")
    assert victim.read_text() == "7\trank 9\n" and not os.path.lexists(report)


def test_a_missing_report_or_lines_that_are_not_ours_are_ignored(tmp_path):
    report = tmp_path / "ranks.report"
    assert mpi_env.read_report(str(report)) == ([], "")
    report.write_text("x\trank 0\n{json}\n3\trank 1\n")
    assert mpi_env.read_report(str(report)) == ([("rank 1", 3)], "")


# ---- $PARSL_MPI_PREFIX for each backend --------------------------------------------------------

def test_dragon_backends_get_the_script_in_dragon_mode():
    assert prefix.prefix_command(SPEC, PLACEMENT).split() == [prefix.bash(), prefix.SCRIPT, "dragon"]


def test_mpiexec_is_run_by_the_app_with_the_placement_and_options(monkeypatch):
    monkeypatch.setattr(prefix, "label_option", lambda mpiexec: "-prepend-rank")
    monkeypatch.setattr(prefix.shutil, "which", lambda name, path=None: f"/opt/mpi/bin/{name}")
    words = prefix.prefix_command(MPIEXEC_SPEC, PLACEMENT).split()
    assert words == ["/opt/mpi/bin/mpiexec", "-n", "4", "-ppn", "2", "-hosts", "n1,n2", "-prepend-rank",
                     "-v", "-x", "A"]
    timed = normalize_spec({"num_ranks": 2, "pmi": "mpiexec", "walltime": 2.5})
    assert prefix.prefix_command(timed, PLACEMENT).split()[:5] == ["timeout", "-k", "5", "2.5", "/opt/mpi/bin/mpiexec"]


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs an mpiexec")
def test_mpiexec_past_the_walltime_is_stopped():
    spec = normalize_spec({"num_ranks": 1, "pmi": "mpiexec", "walltime": 0.5})
    with mpi_env.mpi_task(4, spec, Placement(4, ("localhost",), ((0,),), ((),))):
        started = time.monotonic()
        done = subprocess.run(os.environ["PARSL_MPI_PREFIX"] + " sleep 30", shell=True, timeout=30)
    assert done.returncode == 124 and time.monotonic() - started < 10


def test_a_backend_that_cannot_work_here_is_refused_with_its_reason():
    problem = "pmi='cray' needs Cray PMI (cray-pmi / PALS)"
    assert prefix.prefix_command(SPEC, PLACEMENT, problem).split()[1:] == [prefix.SCRIPT, "refused"]
    with mpi_env.mpi_task(6, SPEC, PLACEMENT, problem) as task:
        done = subprocess.run(os.environ["PARSL_MPI_PREFIX"] + " ./sim 'a b'", shell=True, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 1 and problem in done.stderr
        assert mpi_env.read_report(task.report) == ([], problem)


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs an mpiexec")
def test_the_label_option_of_the_installed_mpiexec_labels_every_line_with_its_rank():
    mpiexec = shutil.which("mpiexec")
    option = prefix.label_option(mpiexec)
    assert option is not None, "the mpiexec scripts/test.sh installs (MPICH) is recognized"
    out = subprocess.run([mpiexec, "-n", "2", option, "echo", "hi"], capture_output=True, text=True, timeout=30)
    assert sorted(out.stdout.split("\n")) == sorted(["", "[0] hi", "[1] hi"])


def test_an_unknown_mpiexec_gets_no_label_option(tmp_path):
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\necho 'SomeMPI 1.0'\n")
    fake.chmod(0o755)
    assert prefix.label_option(str(fake)) is None
    assert prefix.label_option(str(tmp_path / "missing")) is None


def test_an_mpiexec_task_with_gpus_binds_each_rank_through_gpu_bind(monkeypatch):
    from parsl_dragon.task import devices
    from parsl_dragon.vocabulary import ENV_GPUS_PER_RANK, ENV_RANK_GPUS
    spec = normalize_spec({"num_nodes": 2, "ranks_per_node": 2, "pmi": "mpiexec", "gpus_per_rank": 1})
    placement = Placement(9, ("n1", "n2"), ((0, 1), (0, 1)), ((0, 1), (2, 3)))
    monkeypatch.setattr(prefix, "label_option", lambda mpiexec: None)
    with mpi_env.mpi_task(9, spec, placement, None, [["a", "b"], ["c", "d"]]):
        env = dict(os.environ)
    assert env["PARSL_MPI_PREFIX"].split()[-2:] == [prefix.bash(), devices.GPU_BIND_SCRIPT]
    assert env[ENV_RANK_GPUS] == "n1=a,b;n2=c,d" and env[ENV_GPUS_PER_RANK] == "1"
    assert ENV_RANK_GPUS not in os.environ
    with mpi_env.mpi_task(10, SPEC, PLACEMENT):  # no GPUs: no binding, no variables
        assert ENV_RANK_GPUS not in os.environ and devices.GPU_BIND_SCRIPT not in os.environ["PARSL_MPI_PREFIX"]
