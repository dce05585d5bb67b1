"""Running in the driver's own batch job (host/allocation.py, the executor's in_allocation and
boot's runtime environment): which job, how many nodes, which refusals. No scheduler needed."""
import os
import socket

import pytest
from parsl.providers import LocalProvider

from parsl_dragon import ConfigurationError, DragonExecutor
from parsl_dragon.host.allocation import PBS, SLURM, Allocation, current_allocation, job_to_span
from parsl_dragon.server import boot
from parsl_dragon.server.options import ServerOptions
from parsl_dragon.vocabulary import ENV_NODES_PER_BLOCK
from parsl_dragon.wire.security import ephemeral_pair

SLURM2 = {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "2"}


@pytest.fixture
def no_job(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_STEP_ID", "PBS_JOBID", "PBS_NODEFILE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def nodefile(tmp_path, hosts):
    path = tmp_path / "nodefile"
    path.write_text("".join(h + "\n" for h in hosts))
    return str(path)


# ---- which job

def test_the_job_comes_from_what_the_batch_system_set(tmp_path):
    assert current_allocation({}) is None
    assert current_allocation(SLURM2) == Allocation(SLURM, "42", 2)
    assert current_allocation({**SLURM2, "SLURM_STEP_ID": "0"}).step == "0"
    pbs = {"PBS_JOBID": "7.pbs", "PBS_NODEFILE": nodefile(tmp_path, ["a", "a", "b", "c"])}
    assert current_allocation(pbs) == Allocation(PBS, "7.pbs", 3)
    assert current_allocation({"PBS_JOBID": "7.pbs", "PBS_NODEFILE": str(tmp_path / "gone")}) is None
    with pytest.raises(ConfigurationError, match="SLURM_JOB_NUM_NODES"):
        current_allocation({"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "two"})


def test_a_block_spans_the_job_or_the_nodes_asked_for():
    assert job_to_span(None, None, None, SLURM2).span == 2
    assert job_to_span(None, True, 1, SLURM2).span == 1
    for wanted in (0, 3):
        with pytest.raises(ConfigurationError, match=f"allocation_nodes={wanted}.*has 2"):
            job_to_span(None, None, wanted, SLURM2)


def test_nothing_to_span_outside_a_job_or_with_a_provider_or_when_told_not_to():
    assert job_to_span(None, None, None, {}) is None
    assert job_to_span(LocalProvider(), None, None, SLURM2) is None
    assert job_to_span(None, False, None, SLURM2) is None


@pytest.mark.parametrize("provider,in_allocation,nodes,env,words", [
    (None, True, None, {}, "runs in no batch job"),
    (LocalProvider(), True, None, SLURM2, "give one or the other"),
    (None, False, 2, SLURM2, "allocation_nodes needs"),
    (None, None, 1, {}, "allocation_nodes needs"),
])
def test_combinations_that_mean_nothing_are_refused(provider, in_allocation, nodes, env, words):
    with pytest.raises(ConfigurationError, match=words):
        job_to_span(provider, in_allocation, nodes, env)


def test_a_multi_node_block_from_inside_a_job_step_is_refused_with_what_to_run_instead():
    step = {**SLURM2, "SLURM_STEP_ID": "0"}
    with pytest.raises(ConfigurationError) as info:
        job_to_span(None, None, None, step)
    assert "SLURM_STEP_ID" in str(info.value) and "not `srun python pipeline.py`" in str(info.value)
    assert job_to_span(None, None, 1, step).span == 1, "a block on this node alone can start in a step"


# ---- the executor

def test_the_executor_spans_the_job_it_runs_in(no_job):
    no_job.setenv("SLURM_JOB_ID", "42")
    no_job.setenv("SLURM_JOB_NUM_NODES", "2")
    executor = DragonExecutor()
    assert executor.allocation.span == 2 and executor.provider.nodes_per_block == 2
    assert executor._spans_nodes
    one = DragonExecutor(allocation_nodes=1)
    assert one.provider.nodes_per_block == 1 and not one._spans_nodes
    assert DragonExecutor(in_allocation=False).allocation is None


def test_outside_a_job_the_default_is_one_block_here(no_job):
    executor = DragonExecutor()
    assert executor.allocation is None and executor.provider.nodes_per_block == 1
    with pytest.raises(ConfigurationError, match="runs in no batch job"):
        DragonExecutor(in_allocation=True)


def test_a_block_spanning_the_job_publishes_an_address_every_node_reaches_and_keeps_a_driver_core(no_job, tmp_path):
    from parsl_dragon.driver.blocks import host_address
    no_job.setenv("SLURM_JOB_ID", "42")
    no_job.setenv("SLURM_JOB_NUM_NODES", "2")
    executor = DragonExecutor()
    assert host_address(None, executor.provider, executor._spans_nodes) == "auto"
    assert host_address(None, executor.provider, False) == "127.0.0.1"
    assert host_address("10.0.0.5", executor.provider, True) == "10.0.0.5"
    options = ServerOptions(connection_file="c", log_path="l", server_keys=ephemeral_pair(), client_keys=[],
                            driver_host=socket.gethostname())
    assert options.cores_of(socket.gethostname(), 8) == 7 and options.cores_of("other", 8) == 8
    assert options.cores_of(socket.gethostname(), 1) == 1, "never below one core"
    assert options.cores_of("localhost", 8) == 7, "a one-node runtime names its node localhost"
    assert options.cores_of(socket.gethostname() + ".cluster.example", 8) == 7


# ---- boot: the runtime's nodes and environment

def test_boot_spans_the_blocks_nodes_not_more(tmp_path):
    assert boot.runtime_nodes({**SLURM2, ENV_NODES_PER_BLOCK: "1"}) == 1
    assert boot.launch_mode_args({**SLURM2, ENV_NODES_PER_BLOCK: "1"}) == ["-s"]
    assert boot.runtime_nodes({**SLURM2, ENV_NODES_PER_BLOCK: "2"}) == 2
    assert boot.runtime_nodes({**SLURM2, ENV_NODES_PER_BLOCK: "5"}) == 2, "never more than the job has"


def test_dragons_srun_does_not_inherit_the_jobs_task_layout(tmp_path):
    env = {**SLURM2, "SLURM_NTASKS_PER_NODE": "2", "SLURM_NTASKS": "4", "SLURM_TASKS_PER_NODE": "2(x2)",
           "SLURM_JOB_NODELIST": "node[1-2]", ENV_NODES_PER_BLOCK: "2"}
    out = boot.runtime_environment(env, str(tmp_path))
    assert not {"SLURM_NTASKS_PER_NODE", "SLURM_NTASKS", "SLURM_TASKS_PER_NODE"} & set(out)
    assert out["SLURM_JOB_NODELIST"] == "node[1-2]" and out["SLURM_JOB_NUM_NODES"] == "2"
    assert env["SLURM_NTASKS"] == "4", "the caller's environment is left as it was"


def test_a_block_smaller_than_the_job_shrinks_what_dragon_sees(tmp_path):
    slurm = boot.runtime_environment({"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "4", ENV_NODES_PER_BLOCK: "2"},
                                     str(tmp_path))
    assert (slurm["SLURM_JOB_NUM_NODES"], slurm["SLURM_NNODES"]) == ("2", "2")
    here = socket.gethostname()
    block = tmp_path / "block"
    block.mkdir(mode=0o700)
    pbs = {"PBS_JOBID": "7", "PBS_NODEFILE": nodefile(tmp_path, ["x1", "x1", "x2", here, here, "x3"]),
           ENV_NODES_PER_BLOCK: "2"}
    out = boot.runtime_environment(pbs, str(block))
    assert out["PBS_NODEFILE"] == str(block / "nodefile")
    assert open(out["PBS_NODEFILE"]).read().split() == [here, "x1"], "this node first, then the job's order"
    assert os.stat(out["PBS_NODEFILE"]).st_mode & 0o777 == 0o600
    assert boot.launch_mode_args(out) == ["-w", "pbs+pals"]


def test_boot_refuses_a_multi_node_runtime_inside_a_job_step():
    assert "SLURM_STEP_ID" in boot.step_problem({**SLURM2, "SLURM_STEP_ID": "3"})
    assert boot.step_problem({**SLURM2, "SLURM_STEP_ID": "3", ENV_NODES_PER_BLOCK: "1"}) is None
    assert boot.step_problem(SLURM2) is None


def test_the_executor_spans_a_pbs_job_and_boot_starts_pbs_pals_over_its_hosts(no_job, tmp_path):
    no_job.setenv("PBS_JOBID", "7.pbs")
    no_job.setenv("PBS_NODEFILE", nodefile(tmp_path, ["x1", "x1", "x2", "x3"]))
    executor = DragonExecutor()
    assert (executor.allocation.scheduler, executor.allocation.span, executor.provider.nodes_per_block) == (PBS, 3, 3)
    env = {"PBS_JOBID": "7.pbs", "PBS_NODEFILE": os.environ["PBS_NODEFILE"], ENV_NODES_PER_BLOCK: "3"}
    assert boot.launch_mode_args(boot.runtime_environment(env, str(tmp_path))) == ["-w", "pbs+pals"]
    assert DragonExecutor(allocation_nodes=1).provider.nodes_per_block == 1
