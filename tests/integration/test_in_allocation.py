"""A driver that runs *inside* its batch job (``sbatch workflow.sh`` whose last line is
``python pipeline.py``): ``DragonExecutor()`` spans the job it finds itself in. One-node job on
the real single-node Slurm cluster (``scripts/slurm/up.sh``); the 2-node case is in
``test_multinode.py`` (slow)."""
from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from tests.integration.test_slurm import REPO, VENV_BIN, job_processes, job_state, require_slurm, wait_until

pytestmark = pytest.mark.slurm

# The workflow a user would write: no provider, no launcher; the job is the allocation.
WORKFLOW = textwrap.dedent('''
    import json, os, socket, sys
    import parsl
    from parsl import bash_app, python_app
    from parsl_dragon import DragonExecutor

    @python_app
    def where(seconds):
        import os, socket, time
        time.sleep(seconds)  # long enough that each worker gets some: the first idle host takes a lone task
        return [socket.gethostname(), os.environ.get("SLURM_JOB_ID")]

    @bash_app
    def ranks(parsl_resource_specification={}, stdout=None):
        return "$PARSL_MPI_PREFIX hostname"

    report, run_dir = sys.argv[1], sys.argv[2]
    executor = DragonExecutor(heartbeat_period=2.0, heartbeat_threshold=30)
    dfk = parsl.load(parsl.Config(executors=[executor], run_dir=run_dir))
    result = {"span": executor.allocation.span if executor.allocation else None,
              "job": os.environ.get("SLURM_JOB_ID"), "driver": socket.gethostname(), "error": None}
    try:
        result["where"] = [f.result(timeout=600) for f in [where(2.0) for _ in range(int(sys.argv[3]))]]
        out = os.path.join(run_dir, "ranks.txt")
        ranks(parsl_resource_specification={"num_nodes": int(sys.argv[4]), "ranks_per_node": 1, "pmi": "none"},
              stdout=out).result(timeout=900)
        result["ranks"] = sorted(line.split("] ")[1].strip() for line in open(out) if line.startswith("[rank"))
        welcome = executor._servers[0].link.welcome
        result["cores"] = dict(zip(welcome.nodes, welcome.cores))  # the slot table's cores per node
        result["cpus"] = os.cpu_count()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        dfk.cleanup()
    with open(report, "w") as handle:
        json.dump(result, handle)
''')


def batch_script(tmp_path, nodes: int, tasks: int, prefix: str = "") -> str:
    """The user's batch script: #SBATCH lines, then python on the workflow (after ``prefix``, e.g.
    an ``srun`` that makes it a job step), and nothing else."""
    workflow = tmp_path / "workflow.py"
    workflow.write_text(WORKFLOW)
    script = tmp_path / "job.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH -N {nodes}
        #SBATCH --ntasks-per-node=2
        #SBATCH -t 00:20:00
        #SBATCH -o {tmp_path}/job.out
        export PATH={VENV_BIN}:$PATH PYTHONPATH={REPO}
        {prefix}python {workflow} {tmp_path}/report.json {tmp_path}/runinfo {tasks} {nodes}
        """))
    return str(script)


def run_job(submit, script: str, state=job_state, timeout: float = 1200) -> str:
    """Submit ``script`` with ``submit`` (a function running a command), wait for the job's end
    (``state``: the job's state from the cluster it went to)."""
    out = submit(["sbatch", "--parsable", "-p", "debug", script])
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip().split(";")[0]
    wait_until(lambda: state(job_id) not in ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING"), timeout,
               f"job {job_id} to end", interval=1.0)
    return job_id


def test_a_driver_in_its_batch_job_spans_that_job_and_leaves_nothing(no_leaks, tmp_path):
    require_slurm()
    job_id = run_job(lambda cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=60),
                     batch_script(tmp_path, nodes=1, tasks=3))
    report = tmp_path / "report.json"
    assert report.exists(), (tmp_path / "job.out").read_text()[-4000:]
    result = json.loads(report.read_text())
    assert result["error"] is None, f"{result}\n{(tmp_path / 'job.out').read_text()[-4000:]}"
    assert result["span"] == 1 and result["job"] == job_id
    assert all(where == [result["driver"], job_id] for where in result["where"]), result["where"]
    assert result["ranks"] == [result["driver"]]
    assert list(result["cores"].values()) == [result["cpus"] - 1], "one core of the driver's node is kept for it"
    assert job_state(job_id) == "COMPLETED", "the job ends by itself: the driver's exit, not a cancel"
    wait_until(lambda: not job_processes(job_id), 60, f"the processes of job {job_id} to go")
