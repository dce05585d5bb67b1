"""available_accelerators: parsing with HTEX's types, ids, the GPU variables, the per-rank share,
the task's binding in the worker, and gpu_bind.sh under a real mpiexec."""
import os
import shutil
import subprocess

import pytest

from parsl_dragon.core import accelerators as acc
from parsl_dragon.core.placement import Placement
from parsl_dragon.errors import ConfigurationError
from parsl_dragon.task import devices
from parsl_dragon.vocabulary import ENV_ACCELERATORS, ENV_GPUS_PER_RANK, ENV_RANK_GPUS

AURORA = [f"{gpu}.{tile}" for gpu in range(6) for tile in range(2)]


@pytest.mark.parametrize("value, expected", [
    (None, None),
    (0, ()),
    (4, ("0", "1", "2", "3")),
    (["0", "1"], ("0", "1")),
    (("2", 3), ("2", "3")),            # an int in the list is taken as its text
    (AURORA, tuple(AURORA)),           # tiles
    (["0", "0", "1", "1"], ("0", "0", "1", "1")),  # a repeated id: a shared device, kept twice
    ("0.0,0.1", ("0.0", "0.1")),       # the server's flag and environment form
    ("", ()),
])
def test_parse_accelerators_takes_htex_types(value, expected):
    assert acc.parse_accelerators(value, "available_accelerators") == expected


@pytest.mark.parametrize("value, words", [
    (-1, "between 0 and"),
    (True, "an int or a list"),
    (1.5, "an int or a list"),
    ([None], "device id must be a string"),
    (["0,1"], "no commas"),
    (["0 1"], "no commas or spaces"),
    ([""], "must be letters"),
    ({"0": 1}, "an int or a list"),
])
def test_parse_accelerators_refuses_what_cannot_be_an_id_naming_the_setting(value, words):
    with pytest.raises(ConfigurationError, match="available_accelerators") as info:
        acc.parse_accelerators(value, "available_accelerators")
    assert words in str(info.value)


def test_flag_round_trip_counts_and_ids():
    ids = acc.parse_accelerators(AURORA, "x")
    assert acc.parse_accelerators(acc.as_flag(ids), "--accelerators") == ids
    assert acc.gpu_count(None, 4) == 4 and acc.gpu_count(ids, 4) == 12 and acc.gpu_count((), 4) == 0
    assert acc.device_ids([2, 3], None) == ["2", "3"]
    assert acc.device_ids([2, 3], ids) == ["1.0", "1.1"]
    assert acc.gpu_environment(["1.0", "1.1"]) == {
        "CUDA_VISIBLE_DEVICES": "1.0,1.1", "ROCR_VISIBLE_DEVICES": "1.0,1.1", "ZE_AFFINITY_MASK": "1.0,1.1"}
    assert acc.per_rank(["0", "1", "2", "3"], 2, 1) == ["2", "3"]


def test_gpu_binding_sets_all_three_variables_and_puts_back_what_was_there(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.delenv("ROCR_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("ZE_AFFINITY_MASK", raising=False)
    with devices.gpu_binding(["0.1"]):
        assert {v: os.environ[v] for v in acc.GPU_ENV_VARS} == acc.gpu_environment(["0.1"])
        os.environ["CUDA_VISIBLE_DEVICES"] = "changed by the task"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7", "the worker's own value is back"
    assert "ROCR_VISIBLE_DEVICES" not in os.environ and "ZE_AFFINITY_MASK" not in os.environ, "unset again"
    with pytest.raises(RuntimeError):
        with devices.gpu_binding(["3"]):
            raise RuntimeError("the task failed")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7" and "ZE_AFFINITY_MASK" not in os.environ
    before = dict(os.environ)
    with devices.gpu_binding([]):  # a task without GPUs: nothing touched
        assert dict(os.environ) == before


def test_devices_per_host_and_the_block_ids_from_the_workers_environment():
    placement = Placement(3, ("a", "b"), ((0,), (1,)), ((0, 1), (2, 3)))
    assert devices.devices_per_host(placement, None) == [["0", "1"], ["2", "3"]]
    ids = devices.block_accelerators({ENV_ACCELERATORS: ",".join(AURORA)})
    assert devices.devices_per_host(placement, ids) == [["0.0", "0.1"], ["1.0", "1.1"]]
    assert devices.block_accelerators({}) is None
    assert devices.devices_per_host(None, ids) == []
    assert devices.rank_gpu_environment(placement, [["0.0", "0.1"], ["1.0", "1.1"]], 1) == {
        ENV_RANK_GPUS: "a=0.0,0.1;b=1.0,1.1", ENV_GPUS_PER_RANK: "1"}


def _bind(env, *command):
    return subprocess.run(["bash", devices.GPU_BIND_SCRIPT, *command], env=dict(os.environ, **env),
                          capture_output=True, text=True)


def test_gpu_bind_refuses_a_rank_it_cannot_place_and_says_why():
    base = {ENV_GPUS_PER_RANK: "1", ENV_RANK_GPUS: "node-a=0;node-b=1"}
    for var in ("MPI_LOCALRANKID", "PALS_LOCAL_RANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK",
                "SLURM_LOCALID"):
        base.setdefault(var, "")
    done = _bind(dict(base, MPI_LOCALRANKID="0"), "true")
    assert done.returncode == 1 and "is not among the task's hosts" in done.stderr
    done = _bind({ENV_GPUS_PER_RANK: "1", ENV_RANK_GPUS: "node-a=0", "MPI_LOCALRANKID": ""}, "true")
    assert done.returncode == 1 and "cannot tell this rank's local rank" in done.stderr
    done = _bind({ENV_GPUS_PER_RANK: "2", ENV_RANK_GPUS: "node-a=0,1", "MPI_LOCALRANKID": "1"}, "true")
    assert done.returncode == 1 and "needs devices 2..3 of this node's 2" in done.stderr
    done = _bind({ENV_GPUS_PER_RANK: "", ENV_RANK_GPUS: "node-a=0"}, "true")
    assert done.returncode == 1 and "PARSL_DRAGON_GPUS_PER_RANK" in done.stderr
    here = os.uname().nodename.split(".")[0]
    done = _bind({ENV_GPUS_PER_RANK: "1", ENV_RANK_GPUS: f"elsewhere=0;{here}=5,6", "SLURM_LOCALID": "1",
                  "MPI_LOCALRANKID": ""}, "printenv", "ZE_AFFINITY_MASK")
    assert done.returncode == 0 and done.stdout == "6\n", "this node's list, found by its short name"


def test_gpu_bind_gives_each_mpiexec_rank_its_own_devices():
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        if os.environ.get("CI") == "true":
            pytest.fail("MPICH's mpiexec is required under CI=true")
        pytest.skip("no mpiexec")
    env = dict(os.environ, **{ENV_GPUS_PER_RANK: "2", ENV_RANK_GPUS: "localhost=0.0,0.1,1.0,1.1"})
    done = subprocess.run([mpiexec, "-n", "2", "-hosts", "localhost", "-prepend-rank", "bash", devices.GPU_BIND_SCRIPT,
                           "sh", "-c", "echo $CUDA_VISIBLE_DEVICES $ROCR_VISIBLE_DEVICES $ZE_AFFINITY_MASK"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["[0] 0.0,0.1 0.0,0.1 0.0,0.1", "[1] 1.0,1.1 1.0,1.1 1.0,1.1"]
