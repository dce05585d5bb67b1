"""GPUs per task on the real runtime, without a GPU: ``available_accelerators`` lists name the
devices, and what each task and rank sees in its GPU variables is checked (docs/gpus.md)."""
import os
import shutil
import subprocess
import time

import pytest
from parsl import bash_app, python_app
from parsl.executors.errors import InvalidResourceSpecification

GPU_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")
SHOW = ('echo "$CUDA_VISIBLE_DEVICES $ROCR_VISIBLE_DEVICES $ZE_AFFINITY_MASK '
        '$(grep Cpus_allowed_list /proc/self/status)"')


@python_app
def gpus_seen(seconds=0.0, parsl_resource_specification={}):
    import os
    import time
    start = time.time()
    seen = tuple(os.environ.get(var) for var in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK"))
    time.sleep(seconds)
    return seen, start, time.time(), os.getpid()


@bash_app
def run(command, parsl_resource_specification={}, stdout=None, stderr=None):
    return command


def _overlap(a, b):
    return a[1] < b[2] and b[1] < a[2]


def test_serial_tasks_see_exactly_their_devices_and_the_worker_is_restored(load_dfk, tmp_path):
    load_dfk(workers_per_node=2, available_accelerators=["0.0", "0.1"])  # two tiles of one GPU
    one = {"gpus_per_rank": 1}
    first, second = [gpus_seen(1.5, parsl_resource_specification=one) for _ in range(2)]
    first, second = first.result(timeout=120), second.result(timeout=60)
    assert _overlap(first, second) and first[3] != second[3], "two workers at once"
    assert {first[0], second[0]} == {("0.0",) * 3, ("0.1",) * 3}, "two concurrent tasks, two devices, 3 variables"

    out = tmp_path / "bash.out"
    assert run(SHOW, parsl_resource_specification=one, stdout=str(out)).result(timeout=60) == 0
    assert out.read_text().split()[0] in ("0.0", "0.1") and len(set(out.read_text().split()[:3])) == 1
    both = gpus_seen(parsl_resource_specification={"gpus_per_rank": 2}).result(timeout=60)
    assert both[0] == ("0.0,0.1",) * 3

    # Tasks without GPUs, on both workers at once: the variables are what the workers started with.
    plain = [gpus_seen(1.0) for _ in range(2)]
    plain = [f.result(timeout=60) for f in plain]
    assert {p[3] for p in plain} == {first[3], second[3]}, "the same two workers ran them"
    assert all(p[0] == tuple(os.environ.get(v) for v in GPU_VARS) for p in plain), "no device left bound"

    with pytest.raises(InvalidResourceSpecification, match="gpus_per_rank") as info:
        gpus_seen(parsl_resource_specification={"gpus_per_rank": 3}).result(timeout=60)
    assert "largest node has 2" in str(info.value)


def test_an_id_listed_twice_is_a_device_two_tasks_share(load_dfk):
    load_dfk(workers_per_node=2, available_accelerators=["0", "0"])
    futures = [gpus_seen(1.5, parsl_resource_specification={"gpus_per_rank": 1}) for _ in range(2)]
    a, b = [f.result(timeout=120) for f in futures]
    assert a[0] == b[0] == ("0",) * 3 and _overlap(a, b)


def test_a_block_without_gpus_refuses_a_gpu_task_at_submit(load_dfk):
    load_dfk(workers_per_node=1)  # Dragon finds no GPU on this machine
    with pytest.raises(InvalidResourceSpecification, match="this block has no GPUs") as info:
        gpus_seen(parsl_resource_specification={"gpus_per_rank": 1}).result(timeout=120)
    assert "gpus_per_rank" in str(info.value)
    assert gpus_seen().result(timeout=60)[0] == tuple(os.environ.get(v) for v in GPU_VARS), "the block goes on"


@pytest.mark.parametrize("pmi, label", [("none", "[rank {}]"), ("mpiexec", "[{}]")])
def test_each_rank_gets_its_own_devices_beside_its_cores(load_dfk, tmp_path, pmi, label):
    if pmi == "mpiexec" and shutil.which("mpiexec") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("MPICH's mpiexec is required under CI=true: scripts/test.sh installs it")
        pytest.skip("no mpiexec")
    load_dfk(workers_per_node=2, available_accelerators=["0.0", "0.1", "1.0", "1.1"])
    spec = {"num_nodes": 1, "ranks_per_node": 2, "gpus_per_rank": 2, "pmi": pmi}
    if pmi == "none":
        spec["cpu_bind"] = True
    out = tmp_path / "ranks.out"
    assert run(f"$PARSL_MPI_PREFIX sh -c '{SHOW}'; {SHOW}", parsl_resource_specification=spec,
               stdout=str(out)).result(timeout=120) == 0
    lines = out.read_text().splitlines()
    for rank, devices in ((0, "0.0,0.1"), (1, "1.0,1.1")):
        [line] = [x for x in lines if x.startswith(label.format(rank) + " ")]
        words = line.split()
        assert words[-5:-2] == [devices] * 3, line
        if pmi == "none":
            assert words[-1] == str(rank), f"cpu_bind keeps each rank on its own core: {line}"
    [app] = [x for x in lines if not x.startswith("[")]
    assert app.split()[:3] == ["0.0,0.1,1.0,1.1"] * 3, "the app itself sees the task's devices on its node"


@python_app
def load_library(path, parsl_resource_specification={}):
    import ctypes
    import os
    ctypes.CDLL(path)  # as a GPU runtime's driver library is loaded on first use
    return os.getpid()


def test_a_worker_left_with_a_gpu_runtime_retires_and_is_replaced(load_dfk, tmp_path):
    """A stand-in ``libcuda.so.1`` (an empty shared library) loaded by a GPU task: its worker
    must not run another task with that runtime bound to the old devices."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build the stand-in library")
    (tmp_path / "empty.c").write_text("int parsl_dragon_stand_in = 1;\n")
    library = tmp_path / "libcuda.so.1"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(library), str(tmp_path / "empty.c")], check=True)
    load_dfk(workers_per_node=1, available_accelerators=["0", "1"])
    one = {"gpus_per_rank": 1}
    bound = load_library(str(library), parsl_resource_specification=one).result(timeout=120)
    after = [gpus_seen(parsl_resource_specification=one).result(timeout=120) for _ in range(2)]
    assert after[0][3] != bound, "the task after it ran in a fresh worker"
    assert after[0][0] in (("0",) * 3, ("1",) * 3) and after[0][3] == after[1][3], "which stays: no runtime"
    assert gpus_seen().result(timeout=60)[3] == after[0][3]
    deadline = time.time() + 30
    while os.path.exists(f"/proc/{bound}") and time.time() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{bound}"), "the retired worker exited"
