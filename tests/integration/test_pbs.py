"""DragonExecutor blocks through Parsl's PBSProProvider, run by a FAKE PBS.

FAKE PBS for tests; no PBS server exists in Debian or PyPI: ``tests/fakepbs`` provides
``qsub``/``qstat -x -f -F json``/``qdel`` that really run jobs on this host (own process
group, ``PBS_JOBID``, ``PBS_NODEFILE``, walltime, qdel kills everything carrying the job
id). Each test prepends the fake's bin dir to PATH and gives it a private state dir.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import time
from typing import Dict

import pytest
from parsl import bash_app, python_app
from parsl.jobs.states import JobState
from parsl.providers import PBSProProvider

from parsl_dragon import ServerLost
from parsl_dragon.driver.launchers import DragonLauncher
from tests.fakepbs import BIN_DIR
from tests.integration.test_slurm import REPO, VENV_BIN, mapped_shm, wait_until

FAKE = "FAKE PBS for tests; no PBS server exists in Debian or PyPI"


@pytest.fixture(autouse=True)
def fake_pbs(monkeypatch, tmp_path):
    """The fake's commands first on PATH and a private state dir; returns that dir."""
    state = tmp_path / "fakepbs"
    monkeypatch.setenv("PATH", BIN_DIR + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("FAKEPBS_HOME", str(state))
    monkeypatch.setenv("FAKEPBS_KILL_WAIT", "5")
    return state


def pbs_provider(**kwargs) -> PBSProProvider:
    # Like PBS, the fake does not pass the submitter's environment: worker_init must set it up.
    options = dict(queue="debug", account="TEST_PROJECT", nodes_per_block=1, cpus_per_node=2, init_blocks=1,
                   min_blocks=0, max_blocks=1, walltime="00:10:00", launcher=DragonLauncher(), cmd_timeout=30,
                   worker_init=f"export PATH={VENV_BIN}:$PATH; export PYTHONPATH={REPO}")
    options.update(kwargs)
    return PBSProProvider(**options)


def job_processes(job_id: str) -> Dict[int, str]:
    needle, found = f"PBS_JOBID={job_id}".encode(), {}
    for path in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{path}/environ", "rb") as handle:
                if needle not in handle.read().split(b"\0"):
                    continue
            with open(f"{path}/cmdline", "rb") as handle:
                found[int(path.rsplit("/", 1)[1])] = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def qstat_job(job_id: str) -> dict:
    out = subprocess.run(["qstat", "-x", "-f", "-F", "json", job_id], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)["Jobs"].get(job_id, {})


def assert_job_left_nothing(job_id: str, shm, timeout: float = 60.0) -> dict:
    wait_until(lambda: qstat_job(job_id).get("job_state") == "F", timeout, f"fake PBS job {job_id} to finish")
    wait_until(lambda: not job_processes(job_id), timeout, f"the processes of job {job_id} to go")
    if shm:
        wait_until(lambda: not any(os.path.exists(f) for f in shm), timeout, f"the shm pools of {job_id} to go")
    return qstat_job(job_id)


@python_app
def pbs_env():
    import os
    import socket
    with open(os.environ["PBS_NODEFILE"]) as handle:
        nodes = handle.read().split()
    return {"job": os.environ.get("PBS_JOBID"), "nodes": nodes, "host": socket.gethostname(),
            "workdir": os.environ.get("PBS_O_WORKDIR"), "fake": os.environ.get("FAKEPBS")}


@python_app
def snooze(seconds):
    import os
    import time
    time.sleep(seconds)
    return os.environ.get("PBS_JOBID")


@bash_app
def job_id_to(path):
    return f"echo $PBS_JOBID $PBS_QUEUE > {path}"


def _block_job(dfk) -> str:
    executor = dfk.executors["dragon"]
    return wait_until(lambda: next(iter(executor.blocks_to_job_id.values()), None), 60, "the block's job id")


# ---------------------------------------------------------------- the fake itself (no Dragon)

def test_fake_qstat_output_is_what_pbspro_provider_reads(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#PBS -l walltime=00:00:30\necho $PBS_JOBID; cat $PBS_NODEFILE; sleep 30\n")
    job_id = subprocess.run(["qsub", "-q", "debug", str(script)], capture_output=True, text=True,
                            check=True, cwd=tmp_path).stdout.strip()
    assert job_id.endswith(".fakepbs")
    provider = PBSProProvider(launcher=DragonLauncher())
    provider.resources[job_id] = {"job_id": job_id, "status": None, "job_stdout_path": None, "job_stderr_path": None}
    wait_until(lambda: provider.status([job_id])[0].state == JobState.RUNNING, 30, "RUNNING via the provider")
    record = qstat_job(job_id)
    assert record["queue"] == "debug" and record["Resource_List"]["walltime"] == "00:00:30"
    assert FAKE in record["comment"]
    assert provider.cancel([job_id]) == [True]
    wait_until(lambda: qstat_job(job_id).get("job_state") == "F", 30, "qdel to end the job")
    assert qstat_job(job_id)["Exit_status"] == 271
    assert not job_processes(job_id)
    lines = (tmp_path / f"job.sh.o{job_id.split('.')[0]}").read_text().split()
    assert lines[0] == job_id and lines[1] == os.uname().nodename


def test_fake_enforces_walltime_and_kills_escaped_processes(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n( setsid sleep 300 </dev/null >/dev/null 2>&1 & )\nsleep 300\n")
    job_id = subprocess.run(["qsub", "-l", "walltime=00:00:02", str(script)], capture_output=True, text=True,
                            check=True, cwd=tmp_path).stdout.strip()
    wait_until(lambda: len(job_processes(job_id)) >= 2, 30, "the job's processes")
    record = assert_job_left_nothing(job_id, set(), timeout=30)
    assert record["Exit_status"] == -29


def test_fake_does_not_leak_the_submit_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_OF_SUBMITTER", "x")
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\necho ${SECRET_OF_SUBMITTER:-unset} ${PASSED:-unset} $PATH\n")
    job_id = subprocess.run(["qsub", "-v", "PASSED=yes", "-o", str(tmp_path / "out"), str(script)],
                            capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    wait_until(lambda: qstat_job(job_id).get("job_state") == "F", 30, "the job to finish")
    assert (tmp_path / "out").read_text().split() == ["unset", "yes", "/usr/local/bin:/usr/bin:/bin"]


# ---------------------------------------------------------------- DragonExecutor through PBSProProvider

def test_python_and_bash_apps_run_in_a_pbs_block_and_shutdown_cleans_up(load_dfk, tmp_path):
    dfk = load_dfk(provider=pbs_provider())
    info = pbs_env().result(timeout=180)
    job_id = _block_job(dfk)
    assert info["job"] == job_id and info["fake"] == FAKE
    assert info["nodes"] == [os.uname().nodename]
    out = tmp_path / "bash.out"
    assert job_id_to(str(out)).result(timeout=60) == 0
    assert out.read_text().split() == [job_id, "debug"]
    shm = mapped_shm(job_processes(job_id))
    assert shm, "the block's runtime maps /dev/shm pools"
    dfk.cleanup()
    record = assert_job_left_nothing(job_id, shm)
    assert record["Exit_status"] in (0, 271), record  # the server stopped itself, or qdel ended it
    boot_log = glob.glob(str(tmp_path / "runinfo" / "*" / "dragon" / "block-0" / "boot.log"))[0]
    assert "launch mode -s" in open(boot_log).read()


def test_two_node_block_on_one_host_runs_single_node_dragon(load_dfk, tmp_path):
    """The fake lists this host once per chunk: boot sees one distinct node, runs `dragon -s`, says so."""
    dfk = load_dfk(provider=pbs_provider(nodes_per_block=2))
    assert pbs_env().result(timeout=180)["nodes"] == [os.uname().nodename] * 2
    dfk.cleanup()
    boot_log = open(glob.glob(str(tmp_path / "runinfo" / "*" / "dragon" / "block-0" / "boot.log"))[0]).read()
    assert "launch mode -s" in boot_log
    assert "asked for 2 nodes but the allocation has 1" in boot_log


def test_external_qdel_fails_running_tasks_and_leaves_nothing(load_dfk):
    dfk = load_dfk(provider=pbs_provider(), heartbeat_period=1.0, heartbeat_threshold=3)
    job_id = snooze(0).result(timeout=180)
    assert job_id == _block_job(dfk)
    shm = mapped_shm(job_processes(job_id))
    running = snooze(300)
    time.sleep(2.0)
    deleted = time.monotonic()
    subprocess.run(["qdel", job_id], check=True, timeout=30)
    with pytest.raises(ServerLost):
        running.result(timeout=60)
    assert time.monotonic() - deleted < 30
    assert assert_job_left_nothing(job_id, shm)["Exit_status"] == 271


def test_walltime_expiry_fails_running_tasks_and_leaves_nothing(load_dfk):
    dfk = load_dfk(provider=pbs_provider(walltime="00:00:40"), heartbeat_period=1.0, heartbeat_threshold=3)
    job_id = snooze(0).result(timeout=180)
    assert job_id == _block_job(dfk)
    shm = mapped_shm(job_processes(job_id))
    with pytest.raises(ServerLost):
        snooze(300).result(timeout=120)
    assert assert_job_left_nothing(job_id, shm)["Exit_status"] == -29
