"""A 2-node DragonExecutor block on a 2-node Slurm cluster simulated with network namespaces.

``scripts/slurm/multinode-up.sh`` builds the cluster (nodes ``node1``/``node2`` in their own
network, UTS and mount namespaces; slurmctld and the clients in ``pdmn-ctl``). The Parsl
driver must reach the nodes' addresses, which exist only inside those namespaces, so the
test runs the driver (``drive()`` below) as a subprocess inside ``pdmn-ctl`` and checks
its JSON report. The block is one Slurm job of 2 nodes; boot starts ``dragon -w slurm``,
which puts Dragon's backend and our workers on both nodes.

Slow (Dragon's multi-node start-up takes 20 s to minutes on 2 cores) and root-only.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import pytest

from tests.integration.test_slurm import REPO, VENV_BIN, job_processes, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SCRIPTS = os.path.join(REPO, "scripts", "slurm")
NODES = ["node1", "node2"]
DRIVER_TIMEOUT = 1200


# ---------------------------------------------------------------- the driver (runs inside pdmn-ctl)

def drive(run_dir: str, report: str) -> None:
    """Run a Parsl workflow on one 2-node block; write what happened to ``report`` (JSON)."""
    import parsl
    from parsl import bash_app, python_app
    from parsl.config import Config
    from parsl.providers import SlurmProvider

    from parsl_dragon import DragonExecutor
    from parsl_dragon.driver.launchers import DragonLauncher

    @python_app
    def host(seconds):
        import socket
        import time
        time.sleep(seconds)
        return socket.gethostname()

    @bash_app
    def host_to(path):
        return f"hostname > {path}"

    @python_app
    def produce(i, parsl_resource_specification={}):
        import socket
        import time

        import numpy
        time.sleep(1.0)  # long enough that both nodes' workers take producers
        return {"host": socket.gethostname(), "array": numpy.full(1 << 17, float(i))}  # a 1 MB array

    @python_app
    def consume(inputs=()):
        import socket
        return {"host": socket.gethostname(), "sum": float(sum(float(p["array"].sum()) for p in inputs)),
                "producers": sorted({p["host"] for p in inputs}),
                "writable": all(p["array"].flags.writeable for p in inputs)}

    @bash_app
    def rank_hosts(parsl_resource_specification={}, stdout=None):
        return "$PARSL_MPI_PREFIX hostname"

    @bash_app
    def rank_gpus(parsl_resource_specification={}, stdout=None):
        return "$PARSL_MPI_PREFIX sh -c 'echo $(hostname) $CUDA_VISIBLE_DEVICES $ZE_AFFINITY_MASK'"

    provider = SlurmProvider(
        partition=os.environ.get("PARSL_DRAGON_MN_PARTITION", "debug"), nodes_per_block=2, init_blocks=1,
        min_blocks=0, max_blocks=1, walltime="00:20:00", launcher=DragonLauncher(), cmd_timeout=60,
        worker_init=f"export PATH={VENV_BIN}:$PATH; export PYTHONPATH={REPO}")
    # A 2-minute lease: with two runtimes' worth of busy-polling on 2 shared cores, a 20 s lease
    # expired mid-run once (the server stopped with "lost the lease of owner client").
    # A ProcessGroup over two namespace nodes sharing 2 cores can take minutes to start its
    # ranks: the rank start-up guard gets 10 minutes here (default 60 s + 10 ms per rank).
    executor = DragonExecutor(provider=provider, workers_per_node=1, heartbeat_period=5.0, heartbeat_threshold=24,
                              startup_timeout_ms=900_000, timeout_ms=120_000, rank_startup_timeout_ms=600_000,
                              available_accelerators=["0.0", "0.1"],  # two tiles per node (no GPU here)
                              kept_results_memory=256 << 20)
    dfk = parsl.load(Config(executors=[executor], run_dir=run_dir, strategy_period=0.5))
    result = {"hosts": [], "bash_host": None, "rank_hosts": None, "mpiexec_hosts": None, "job_id": None,
              "startup_s": None, "ranks_s": None, "gpu_ranks": {}, "kept": None, "error": None}
    started = time.monotonic()
    try:
        result["hosts"].append(host(0).result(timeout=DRIVER_TIMEOUT))
        result["startup_s"] = round(time.monotonic() - started, 1)
        result["hosts"] += [f.result(timeout=300) for f in [host(2.0) for _ in range(8)]]
        # kept results on both nodes' DDict managers, read by one consumer (one node's locally, the
        # other's through Dragon's transport) and one of them in the driver (over the server's link)
        parts = [produce(i, parsl_resource_specification={"keep_result": True}) for i in range(6)]
        consumed = consume(inputs=parts).result(timeout=300)
        result["kept"] = {**consumed, "expected": float(sum(i * (1 << 17) for i in range(6))),
                          "in_driver": float(parts[5].result()["array"].sum())}
        path = os.path.join(run_dir, "bash_host.txt")
        host_to(path).result(timeout=300)
        with open(path) as handle:
            result["bash_host"] = handle.read().strip()
        ranks_out = os.path.join(run_dir, "rank_hosts.txt")
        ranks_started = time.monotonic()
        rank_hosts(parsl_resource_specification={"num_nodes": 2, "ranks_per_node": 1, "pmi": "none"},
                   stdout=ranks_out).result(timeout=900)
        result["ranks_s"] = round(time.monotonic() - ranks_started, 1)
        with open(ranks_out) as handle:
            result["rank_hosts"] = sorted(line.strip() for line in handle if line.startswith("[rank"))
        # the site's mpiexec across both nodes: Hydra's own srun must overlap the runtime's step
        mpiexec_out = os.path.join(run_dir, "mpiexec_hosts.txt")
        rank_hosts(parsl_resource_specification={"num_nodes": 2, "ranks_per_node": 1, "pmi": "mpiexec"},
                   stdout=mpiexec_out).result(timeout=300)
        with open(mpiexec_out) as handle:
            result["mpiexec_hosts"] = sorted(line.strip() for line in handle if line.startswith("["))
        for pmi in ("none", "mpiexec"):  # each rank bound to its node's devices (gpu_bind.sh finds its node)
            gpus_out = os.path.join(run_dir, f"gpu_ranks_{pmi}.txt")
            rank_gpus(parsl_resource_specification={"num_nodes": 2, "ranks_per_node": 1, "gpus_per_rank": 2,
                                                    "pmi": pmi}, stdout=gpus_out).result(timeout=900)
            with open(gpus_out) as handle:
                result["gpu_ranks"][pmi] = sorted(line.split("] ", 1)[1].strip() for line in handle
                                                  if line.startswith("["))
    except Exception as exc:  # reported, then the test fails with the logs
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        result["job_id"] = next(iter(executor.blocks_to_job_id.values()), None)
        dfk.cleanup()
        parsl.clear()
    with open(report, "w") as handle:
        json.dump(result, handle)


# ---------------------------------------------------------------- the test (runs where pytest runs)

@pytest.fixture(scope="module")
def mn_cluster():
    """Start the namespace cluster (root only); stop it afterwards if this fixture started it."""
    problem = None
    if os.geteuid() != 0:
        problem = "the namespace cluster needs root"
    else:
        up = subprocess.run(["bash", os.path.join(SCRIPTS, "multinode-up.sh")], capture_output=True, text=True,
                            timeout=600)
        if up.returncode != 0:
            problem = f"scripts/slurm/multinode-up.sh failed:\n{up.stdout}\n{up.stderr}"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    env = dict(line.split("=", 1) for line in up.stdout.splitlines() if line.startswith("PARSL_DRAGON_MN_"))
    yield env
    if "] started" in up.stdout:
        subprocess.run(["bash", os.path.join(SCRIPTS, "multinode-down.sh")], timeout=300)


def _in_ctl(env, *command, **kwargs):
    return subprocess.run(["nsenter", f"--net={env['PARSL_DRAGON_MN_NETNS']}", *command],
                          env=dict(os.environ, SLURM_CONF=env["PARSL_DRAGON_MN_SLURM_CONF"]), **kwargs)


def _node_shm(env, node):
    """The files in a namespace node's own /dev/shm (entered through its slurmd's mount namespace)."""
    pidfile = os.path.join(os.path.dirname(env["PARSL_DRAGON_MN_SLURM_CONF"]), f"slurmd-{node}.pid")
    with open(pidfile) as handle:
        pid = handle.read().strip()
    out = subprocess.run(["nsenter", "-t", pid, "-m", "ls", "-A", "/dev/shm"], capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout.split()


def _logs(run_dir) -> str:
    parts = []
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "*.log"), recursive=True)
                       + glob.glob(os.path.join(run_dir, "**", "*.std*"), recursive=True)):
        with open(path, errors="replace") as handle:
            lines = [line for line in handle if line.strip()]
        parts.append(f"--- {path}\n{''.join(lines[-40:])}")
    return "\n".join(parts)


@pytest.mark.timeout(DRIVER_TIMEOUT + 1200)
def test_two_node_block_runs_tasks_on_both_nodes(mn_cluster, no_leaks, tmp_path):
    assert mn_cluster["PARSL_DRAGON_MN_NODES"].split(",") == NODES
    run_dir, report = str(tmp_path / "runinfo"), tmp_path / "report.json"
    shm_before = {node: set(_node_shm(mn_cluster, node)) for node in NODES}
    driver = _in_ctl(mn_cluster, sys.executable, "-c",
                     f"from tests.integration.test_multinode import drive; drive({run_dir!r}, {str(report)!r})",
                     cwd=REPO, capture_output=True, text=True, timeout=DRIVER_TIMEOUT + 1000)
    assert driver.returncode == 0 and report.exists(), f"{driver.stdout[-2000:]}\n{driver.stderr[-4000:]}"
    result = json.loads(report.read_text())
    print(f"2-node block: first task after {result['startup_s']} s; hosts {result['hosts']}; "
          f"num_nodes=2 task took {result['ranks_s']} s")
    assert result["error"] is None, f"{result}\n{_logs(run_dir)}"
    boot_log = glob.glob(os.path.join(run_dir, "*", "dragon", "block-0", "boot.log"))[0]
    assert "launch mode -w slurm" in open(boot_log).read()
    # Dragon picks the node of its head process (our server), not always the batch node: the
    # server must publish the address of its own node (scripts/slurm/multinode-common.sh: nodeN
    # is 10.77.0.1N).
    server_log = glob.glob(os.path.join(run_dir, "*", "dragon", "block-0", "server.log"))[0]
    line = next(line for line in open(server_log) if "Server address: " in line)
    address, host = line.split("Server address: ")[1].split()[0], line.rsplit(" on ", 1)[1].strip()
    print(f"server on {host}, publishing {address}")
    assert host in NODES and address == f"10.77.0.1{host[len('node'):]}", line
    assert set(result["hosts"]) == set(NODES), f"tasks ran on {result['hosts']}"
    assert result["bash_host"] in NODES
    kept = result["kept"]
    assert kept["sum"] == kept["expected"] and kept["writable"], f"kept results read back whole: {kept}"
    assert kept["producers"] == NODES, f"producers kept results on both nodes: {kept}"
    assert kept["in_driver"] == 5.0 * (1 << 17), kept
    assert sorted(line.split("] ")[1] for line in result["rank_hosts"]) == NODES, \
        f"a num_nodes=2 task puts one rank on each node: {result['rank_hosts']}"
    assert [line.split("] ")[1] for line in result["mpiexec_hosts"]] == NODES, \
        f"pmi='mpiexec' puts one rank on each node, lines labelled: {result['mpiexec_hosts']}"
    for pmi in ("none", "mpiexec"):
        assert result["gpu_ranks"][pmi] == [f"{node} 0.0,0.1 0.0,0.1" for node in NODES], \
            f"pmi={pmi}: each rank sees its node's two tiles: {result['gpu_ranks'][pmi]}"
    job_id = result["job_id"]
    wait_until(lambda: not _in_ctl(mn_cluster, "squeue", "-h", "-j", job_id, capture_output=True,
                                   text=True).stdout.strip(), 120, f"job {job_id} to leave the queue")
    wait_until(lambda: not job_processes(job_id), 60, f"the processes of job {job_id} to go")
    for node in NODES:
        wait_until(lambda: not set(_node_shm(mn_cluster, node)) - shm_before[node], 60,
                   f"the job's files in {node}'s /dev/shm to go")


def _ctl_job_state(env, job_id) -> str:
    out = _in_ctl(env, "scontrol", "-o", "show", "job", job_id, capture_output=True, text=True, timeout=30)
    return next((w.split("=", 1)[1] for w in out.stdout.split() if w.startswith("JobState=")), "")


@pytest.mark.timeout(DRIVER_TIMEOUT + 1200)
def test_a_driver_in_its_two_node_batch_job_spans_both_nodes(mn_cluster, no_leaks, tmp_path):
    """``sbatch -N2 --ntasks-per-node=2 job.sh`` whose script runs the workflow: ``DragonExecutor()``
    boots one runtime over both nodes, wherever Dragon puts the server."""
    from tests.integration.test_in_allocation import batch_script, run_job
    shm_before = {node: set(_node_shm(mn_cluster, node)) for node in NODES}
    script = batch_script(tmp_path, nodes=2, tasks=8)
    job_id = run_job(lambda cmd: _in_ctl(mn_cluster, *cmd, capture_output=True, text=True, timeout=60), script,
                     state=lambda j: _ctl_job_state(mn_cluster, j), timeout=DRIVER_TIMEOUT)
    report, run_dir = tmp_path / "report.json", str(tmp_path / "runinfo")
    assert report.exists(), (tmp_path / "job.out").read_text()[-4000:]
    result = json.loads(report.read_text())
    assert result["error"] is None, f"{result}\n{_logs(run_dir)}"
    server_log = glob.glob(os.path.join(run_dir, "*", "dragon", "block-0", "server.log"))[0]
    line = next(line for line in open(server_log) if "Server address: " in line)
    address, host = line.split("Server address: ")[1].split()[0], line.rsplit(" on ", 1)[1].strip()
    print(f"in-job 2-node block: driver on {result['driver']}, server on {host} publishing {address}; "
          f"tasks on {sorted(h for h, _ in result['where'])}")
    assert host in NODES and address == f"10.77.0.1{host[len('node'):]}", line
    assert result["span"] == 2 and {h for h, _ in result["where"]} == set(NODES), result["where"]
    assert result["ranks"] == NODES, "a num_nodes=2 task puts one rank on each node"
    other = next(node for node in NODES if node != result["driver"])
    assert result["cores"][result["driver"]] == result["cores"][other] - 1, f"a core kept for the driver: {result}"
    assert _ctl_job_state(mn_cluster, job_id) == "COMPLETED", "the driver's exit ends the job; nothing cancels it"
    wait_until(lambda: not job_processes(job_id), 60, f"the processes of job {job_id} to go")
    for node in NODES:
        wait_until(lambda: not set(_node_shm(mn_cluster, node)) - shm_before[node], 60,
                   f"the job's files in {node}'s /dev/shm to go")


def test_a_driver_in_a_job_step_is_refused_at_once_with_what_to_run_instead(mn_cluster, no_leaks, tmp_path):
    """``srun python pipeline.py`` in a 2-node job: the step holds the job's resources and Dragon's
    own srun would wait for them forever; the executor says so and the job ends at once."""
    from tests.integration.test_in_allocation import batch_script, run_job
    started = time.monotonic()
    job_id = run_job(lambda cmd: _in_ctl(mn_cluster, *cmd, capture_output=True, text=True, timeout=60),
                     batch_script(tmp_path, nodes=2, tasks=1, prefix="srun -N1 -n1 "),
                     state=lambda j: _ctl_job_state(mn_cluster, j), timeout=300)
    took = time.monotonic() - started
    out = (tmp_path / "job.out").read_text()
    print(f"job step refused after {took:.1f}s")
    assert "ConfigurationError" in out and "SLURM_STEP_ID is set" in out and "not `srun python" in out, out[-3000:]
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "runinfo").exists(), "nothing started"
    assert _ctl_job_state(mn_cluster, job_id) == "FAILED"
