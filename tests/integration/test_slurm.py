"""DragonExecutor blocks as real Slurm jobs (Parsl's own SlurmProvider, sbatch/squeue/scancel).

Needs a reachable Slurm cluster with a partition ``debug`` (``scripts/slurm/up.sh`` starts
a single-node one; ``scripts/test.sh`` does that by itself when run as root or under CI).
Without one these tests skip, except under ``CI=true``, where they fail.

"Nothing survives" is checked three ways after every job ends: no process carries the
job's ``SLURM_JOB_ID`` in its environment, the ``/dev/shm`` files the job's processes had
mapped are gone, and the ``no_leaks`` fixture (via ``load_dfk``) finds no new Dragon
process, pool or ``/tmp/dragon-*``.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import textwrap
import time
from typing import Callable, Dict, Optional, Set

import pytest
from parsl import bash_app, python_app
from parsl.providers import SlurmProvider

from parsl_dragon import ServerLost
from parsl_dragon.driver.launchers import DragonLauncher
from parsl_dragon.wire.connection import connection_path, read_connection

pytestmark = pytest.mark.slurm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)
JOB_END_TIMEOUT = 60.0


# ------------------------------------------- helpers (also used by test_multinode, test_pbs, test_multiblock)

def slurm_problem(partition: str = "debug") -> Optional[str]:
    """Why Slurm is not usable here, or None when ``partition`` has an available node."""
    if shutil.which("sinfo") is None:
        return "sinfo is not on PATH (start a test cluster with scripts/slurm/up.sh)"
    try:
        out = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%a %t"], capture_output=True,
                             text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    states = out.stdout.split()
    if out.returncode != 0 or not states:
        return f"sinfo cannot reach slurmctld or has no partition {partition!r}: {out.stderr.strip()}"
    if "up" not in states[0::2] or not {"idle", "mix", "alloc"} & set(states[1::2]):
        return f"partition {partition!r} has no usable node: {out.stdout.strip()}"
    return None


def require_slurm(partition: str = "debug") -> None:
    """Skip without Slurm; under CI=true fail instead (CI must run these tests)."""
    problem = slurm_problem(partition)
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires the Slurm tests, but {problem}")
    pytest.skip(problem)


def worker_init(extra: str = "") -> str:
    """What a site's worker_init does: put the venv first on PATH, make the apps importable."""
    return f"export PATH={VENV_BIN}:$PATH; export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}; {extra}"


def slurm_provider(**kwargs) -> SlurmProvider:
    options = dict(partition="debug", nodes_per_block=1, init_blocks=1, min_blocks=0, max_blocks=1,
                   walltime="00:10:00", launcher=DragonLauncher(), worker_init=worker_init(), cmd_timeout=30)
    options.update(kwargs)
    return SlurmProvider(**options)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(interval)


def _ancestors() -> Set[int]:
    pid, seen = os.getpid(), set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        pid = _parent(pid)
    return seen


def job_processes(job_id: str) -> Dict[int, str]:
    """``{pid: command line}`` of processes whose environment carries SLURM_JOB_ID=job_id."""
    needle, mine, found = f"SLURM_JOB_ID={job_id}".encode(), _ancestors(), {}
    for path in glob.glob("/proc/[0-9]*"):
        pid = int(path.rsplit("/", 1)[1])
        try:
            with open(f"{path}/environ", "rb") as handle:
                if pid in mine or needle not in handle.read().split(b"\0"):
                    continue
            with open(f"{path}/cmdline", "rb") as handle:
                found[pid] = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return found


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def mapped_shm(pids) -> Set[str]:
    """``/dev/shm`` files the given processes have mapped (Dragon's pools)."""
    files = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as handle:
                files.update(line.split(None, 5)[5].strip() for line in handle
                             if len(line.split(None, 5)) == 6 and line.split(None, 5)[5].startswith("/dev/shm/"))
        except OSError:
            continue
    return {f.replace(" (deleted)", "") for f in files}


def job_state(job_id: str) -> str:
    """Slurm's state of the job (``RUNNING``, ``CANCELLED``, ``TIMEOUT``, ...) or ``""`` once forgotten."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=15)
    for word in out.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return ""


def assert_job_left_nothing(job_id: str, shm_files: Set[str], timeout: float = JOB_END_TIMEOUT) -> None:
    """The job has ended, no process of it survives and its shm pools are gone."""
    wait_until(lambda: job_state(job_id) not in ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING"),
               timeout, f"job {job_id} to end")
    try:
        wait_until(lambda: not job_processes(job_id), timeout, f"the processes of job {job_id} to go")
    except AssertionError:
        raise AssertionError(f"processes of job {job_id} survived: {job_processes(job_id)}") from None
    if shm_files:
        wait_until(lambda: not any(os.path.exists(f) for f in shm_files), timeout,
                   f"the shm pools of job {job_id} to go: {sorted(shm_files)}")


# ---------------------------------------------------------------- apps

@python_app
def where():
    import os
    import socket
    return {"host": socket.gethostname(), "job": os.environ.get("SLURM_JOB_ID"),
            "path": os.environ.get("PATH", ""), "pid": os.getpid()}


@python_app
def snooze(seconds):
    import os
    import time
    time.sleep(seconds)
    return os.environ.get("SLURM_JOB_ID")


@bash_app
def job_id_to(path):
    return f"echo $SLURM_JOB_ID $SLURM_JOB_PARTITION > {path}"


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module", autouse=True)
def _slurm():
    require_slurm()


def _block_job(dfk) -> str:
    executor = dfk.executors["dragon"]
    return wait_until(lambda: next(iter(executor.blocks_to_job_id.values()), None), 60, "the block's job id")


def test_python_and_bash_apps_run_in_a_slurm_block_and_shutdown_ends_the_job(load_dfk, tmp_path):
    dfk = load_dfk(provider=slurm_provider())
    info = where().result(timeout=180)
    job_id = _block_job(dfk)
    assert info["job"] == job_id, "the app ran inside the block's Slurm job"
    path = info["path"].split(os.pathsep)
    assert VENV_BIN in path and path.index(VENV_BIN) < path.index("/usr/bin"), "worker_init's venv comes first"
    out = tmp_path / "bash.out"
    assert job_id_to(str(out)).result(timeout=60) == 0
    assert out.read_text().split() == [job_id, "debug"]
    server_log = glob.glob(str(tmp_path / "runinfo" / "*" / "dragon" / "block-0" / "server.log"))[0]
    published = [line.split("Server address: ")[1].split()[0] for line in open(server_log)
                 if "Server address: " in line]
    assert published and not published[0].startswith("127."), "--host-address auto resolved to a reachable address"
    assert job_state(job_id) == "RUNNING"
    shm = mapped_shm(job_processes(job_id))
    assert shm, "the running block's Dragon runtime maps /dev/shm pools"
    dfk.cleanup()
    assert_job_left_nothing(job_id, shm)
    assert job_state(job_id) in ("COMPLETED", "CANCELLED", "")


def test_external_scancel_fails_running_tasks_and_leaves_nothing(load_dfk):
    dfk = load_dfk(provider=slurm_provider(), heartbeat_period=1.0, heartbeat_threshold=3)
    job_id = snooze(0).result(timeout=180)
    assert job_id == _block_job(dfk)
    shm = mapped_shm(job_processes(job_id))
    running = snooze(300)
    time.sleep(2.0)  # let it reach a worker
    cancelled = time.monotonic()
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    with pytest.raises(ServerLost) as info:
        running.result(timeout=60)
    assert time.monotonic() - cancelled < 30, "the task failed promptly, not at the end of its sleep"
    # Either the server reports "server stopped: signal SIGTERM" before the runtime dies under it,
    # or it dies first and the heartbeat lease expires: both are one clear, retryable ServerLost.
    assert "server" in str(info.value) and ("SIGTERM" in str(info.value) or "lease" in str(info.value))
    assert_job_left_nothing(job_id, shm)
    assert job_state(job_id) in ("CANCELLED", "")


def test_walltime_expiry_fails_running_tasks_and_leaves_nothing(load_dfk):
    dfk = load_dfk(provider=slurm_provider(walltime="00:01:00"), heartbeat_period=1.0, heartbeat_threshold=3)
    job_id = snooze(0).result(timeout=180)
    assert job_id == _block_job(dfk)
    shm = mapped_shm(job_processes(job_id))
    running = snooze(600)
    with pytest.raises(ServerLost):
        running.result(timeout=180)  # Slurm's time limit is 60 s (OverTimeLimit=0) after the start
    assert_job_left_nothing(job_id, shm)
    assert job_state(job_id) in ("TIMEOUT", "")


def test_epilog_kills_processes_that_escaped_the_job():
    """The cluster's Epilog (scripts/slurm/epilog.py) kills what linuxproc lost: a re-parented process."""
    script = "#!/bin/bash\n( setsid sleep 600 </dev/null >/dev/null 2>&1 & )\nsleep 600\n"  # double fork
    out = subprocess.run(["sbatch", "--parsable", "-p", "debug", "-t", "2", "-o", "/dev/null"], input=script,
                         capture_output=True, text=True, timeout=30, check=True)
    job_id = out.stdout.strip().split(";")[0]
    try:
        wait_until(lambda: list(job_processes(job_id).values()).count("sleep 600") == 2, 60,
                   "the job's two sleeps")
        procs = job_processes(job_id)
        escaped = [pid for pid, cmd in procs.items() if cmd == "sleep 600" and _parent(pid) not in procs]
        assert len(escaped) == 1, "one sleep was re-parented (to init), out of linuxproc's sight"
    finally:
        subprocess.run(["scancel", job_id], timeout=30)
    assert_job_left_nothing(job_id, set())


# A second workflow, run as a step of the block's own job: it attaches through server_path.
SECOND_WORKFLOW = textwrap.dedent("""
    import os, sys, parsl
    from parsl import python_app
    from parsl_dragon import DragonExecutor

    @python_app
    def server_and_job():
        import os
        return os.environ["PARSL_DRAGON_SERVER_ID"], os.environ.get("SLURM_JOB_ID")

    dfk = parsl.load(parsl.Config(executors=[DragonExecutor(server_path=sys.argv[1], heartbeat_period=1.0)],
                                  run_dir=sys.argv[2], strategy_period=0.2))
    server_id, job_id = server_and_job().result(timeout=120)
    print("DRIVER_JOB", os.environ.get("SLURM_JOB_ID"), "SERVER", server_id, "TASK_JOB", job_id, flush=True)
    dfk.cleanup()
""")


def test_second_workflow_in_the_allocation_attaches_to_the_blocks_server(load_dfk, tmp_path):
    shared = str(tmp_path / "shared")
    dfk = load_dfk(provider=slurm_provider(), server_path=shared)
    assert where().result(timeout=180)["job"] == _block_job(dfk)
    job_id = _block_job(dfk)
    info = read_connection(connection_path(shared))
    assert info.job_id == job_id, "the connection file names the allocation the server runs in"
    second = subprocess.run(
        ["srun", f"--jobid={job_id}", "--overlap", "-N1", "-n1", sys.executable, "-c", SECOND_WORKFLOW, shared,
         str(tmp_path / "second-runinfo")], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, f"{second.stdout[-2000:]}\n{second.stderr[-4000:]}"
    words = next(line for line in second.stdout.splitlines() if line.startswith("DRIVER_JOB")).split()
    assert words == ["DRIVER_JOB", job_id, "SERVER", info.server_id, "TASK_JOB", job_id], \
        "the second driver ran inside the allocation and its task ran on the block's server"
    assert not dfk.executors["dragon"].bad_state_is_set
    assert where().result(timeout=60)["job"] == job_id, "the second workflow's exit left the server running"
    assert read_connection(connection_path(shared)).server_id == info.server_id
    shm = mapped_shm(job_processes(job_id))
    dfk.cleanup()
    assert_job_left_nothing(job_id, shm)
    assert not os.path.exists(connection_path(shared)), "the owner's shutdown removed the shared connection file"
