"""MPI tasks on the real runtime: ranks through $PARSL_MPI_PREFIX, real MPICH, PMI checks, sharing."""
import os
import shutil
import subprocess
import time

import pytest
from parsl import bash_app, python_app
from parsl.app.errors import BashExitFailure
from parsl.executors.errors import InvalidResourceSpecification

from parsl_dragon import RankFailure

ALLREDUCE_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int rank, size, sum = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d of %d sum %d\n", rank, size, sum);
    fflush(stdout);
    int fail_rank = argc > 1 ? atoi(argv[1]) : -1;
    MPI_Finalize();
    return rank == fail_rank ? 5 : 0;
}
"""


@pytest.fixture(scope="module")
def allreduce(tmp_path_factory):
    mpicc = shutil.which("mpicc")
    if mpicc is None or shutil.which("mpiexec") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("MPICH (mpicc, mpiexec) is required under CI=true: scripts/test.sh installs it as root")
        pytest.skip("MPICH is not installed")
    build = tmp_path_factory.mktemp("mpi")
    (build / "allreduce.c").write_text(ALLREDUCE_C)
    subprocess.run([mpicc, "-o", str(build / "allreduce"), str(build / "allreduce.c")], check=True)
    return str(build / "allreduce")


@bash_app
def ranks(command, parsl_resource_specification={}, stdout=None, stderr=None):
    return f"$PARSL_MPI_PREFIX {command}"


@python_app
def mpi_variables(parsl_resource_specification={}):
    import os
    import subprocess
    keys = ("PARSL_NUM_NODES", "PARSL_RANKS_PER_NODE", "PARSL_NUM_RANKS", "PARSL_MPI_NODELIST")
    launched = subprocess.run(os.environ["PARSL_MPI_PREFIX"] + " sh -c 'echo $PARSL_RANK'", shell=True,
                              capture_output=True, text=True)
    return {k: os.environ.get(k) for k in keys}, launched.returncode, sorted(launched.stdout.split("\n"))


@python_app
def serial_stamp():
    import time
    return time.time()


RANK_ENV = "sh -c 'echo rank=$PARSL_RANK local=$PARSL_LOCAL_RANK n=$PARSL_NUM_RANKS nodes=$PARSL_MPI_NODELIST'"


def test_real_mpi_program_through_mpiexec(load_dfk, allreduce, tmp_path):
    load_dfk(workers_per_node=2)
    out = tmp_path / "allreduce.out"
    spec = {"num_nodes": 1, "ranks_per_node": 2, "pmi": "mpiexec"}
    assert ranks(allreduce, parsl_resource_specification=spec, stdout=str(out)).result(timeout=120) == 0
    lines = sorted(line for line in out.read_text().splitlines() if "sum" in line)
    assert lines == ["[0] rank 0 of 2 sum 1", "[1] rank 1 of 2 sum 1"], "ranks see each other, lines labelled"

    with pytest.raises(BashExitFailure) as info:  # mpiexec's own exit code, as in HTEX's MPI mode
        ranks(f"{allreduce} 1", parsl_resource_specification=spec, stdout=str(tmp_path / "f.out")).result(timeout=120)
    assert info.value.exitcode != 0


def test_ranks_get_their_own_variables_and_labels(load_dfk, tmp_path):
    load_dfk(workers_per_node=2)
    out = tmp_path / "env.out"
    spec = {"num_nodes": 1, "ranks_per_node": 2, "pmi": "none"}
    assert ranks(RANK_ENV, parsl_resource_specification=spec, stdout=str(out)).result(timeout=120) == 0
    lines = sorted(out.read_text().split("\n"))
    assert "[rank 0] rank=0 local=0 n=2 nodes=localhost" in lines
    assert "[rank 1] rank=1 local=1 n=2 nodes=localhost" in lines

    with pytest.raises(RankFailure) as info:
        ranks("sh -c 'exit $((PARSL_RANK * 7))'", parsl_resource_specification=spec).result(timeout=120)
    assert info.value.failed == [("rank 1", 7)]
    assert "rank 1 exited with 7" in str(info.value)


def test_python_app_gets_variables_and_can_launch(load_dfk):
    load_dfk(workers_per_node=2)
    variables, code, launched = mpi_variables(
        parsl_resource_specification={"num_ranks": 2, "num_nodes": 1, "pmi": "none"}).result(timeout=120)
    assert variables == {"PARSL_NUM_NODES": "1", "PARSL_RANKS_PER_NODE": "2", "PARSL_NUM_RANKS": "2",
                         "PARSL_MPI_NODELIST": "localhost"}
    assert code == 0 and "[rank 0] 0" in launched and "[rank 1] 1" in launched


@pytest.mark.parametrize("backend, needs", [("cray", "Cray PMI"), ("pmix", "PMIx")])
def test_unusable_pmi_backend_fails_fast_with_advice(load_dfk, backend, needs):
    load_dfk(workers_per_node=2)
    started = time.monotonic()
    with pytest.raises(RankFailure) as info:
        spec = {"num_nodes": 1, "ranks_per_node": 2, "pmi": backend}
        ranks("/bin/true", parsl_resource_specification=spec).result(timeout=60)
    assert needs in str(info.value) and "pmi='mpiexec'" in str(info.value)
    assert time.monotonic() - started < 20


def test_invalid_and_oversized_specs_are_refused_at_submit(load_dfk):
    load_dfk(workers_per_node=2)
    assert serial_stamp().result(timeout=120)  # a server is connected: its size is known
    # the executor raises in submit(); Parsl's DFK hands that to the app's future
    with pytest.raises(InvalidResourceSpecification, match="num_ranks"):
        ranks("/bin/true", parsl_resource_specification={"num_nodes": 2, "num_ranks": 3}).result(timeout=10)
    with pytest.raises(InvalidResourceSpecification, match="pmi"):
        ranks("/bin/true", parsl_resource_specification={"num_nodes": 1, "pmi": "slurm-magic"}).result(timeout=10)
    with pytest.raises(InvalidResourceSpecification, match="num_nodes"):
        ranks("/bin/true", parsl_resource_specification={"num_nodes": 4, "ranks_per_node": 1}).result(timeout=10)


def test_mpi_and_serial_tasks_share_the_block_and_queue(load_dfk, tmp_path):
    """4 slots (cores_per_node=4): serial tasks run while a 2-rank task runs; a 3-rank task
    submitted meanwhile waits until the 2-rank task frees its cores."""
    load_dfk(workers_per_node=3, cores_per_node=4)
    marker = tmp_path / "ranks-started"
    spec2 = {"num_nodes": 1, "ranks_per_node": 2, "pmi": "none"}
    spec3 = {"num_nodes": 1, "ranks_per_node": 3, "pmi": "none"}
    first = ranks(f"sh -c 'touch {marker}; date +%s.%N; sleep 8; date +%s.%N'",
                  parsl_resource_specification=spec2, stdout=str(tmp_path / "first.out"))
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline and not first.done(), "ranks never started"
        time.sleep(0.1)
    second = ranks("sh -c 'date +%s.%N'", parsl_resource_specification=spec3,
                   stdout=str(tmp_path / "second.out"))
    serial = [serial_stamp() for _ in range(2)]
    serial_times = [f.result(timeout=60) for f in serial]
    assert not first.done(), "serial tasks completed while the MPI task was still running"
    assert not second.done(), "the 3-rank task cannot start while 2 of 4 cores are taken"
    assert first.result(timeout=120) == 0 and second.result(timeout=120) == 0

    def stamps(path):
        return [float(line.split("] ")[1]) for line in open(path) if "] " in line]

    first_end = max(stamps(tmp_path / "first.out"))
    assert all(t < first_end for t in serial_times)
    assert min(stamps(tmp_path / "second.out")) >= first_end, "it started only after the cores were freed"


def test_several_launches_in_one_app_each_get_their_ranks(load_dfk, tmp_path):
    load_dfk(workers_per_node=2)
    out = tmp_path / "twice.out"
    spec = {"num_nodes": 1, "ranks_per_node": 2, "pmi": "none"}
    both = "sh -c 'echo a$PARSL_RANK' & $PARSL_MPI_PREFIX sh -c 'echo b$PARSL_RANK' & wait; " \
           "$PARSL_MPI_PREFIX sh -c 'echo c$PARSL_RANK'"
    assert ranks(both, parsl_resource_specification=spec, stdout=str(out)).result(timeout=120) == 0
    assert sorted(out.read_text().splitlines()) == sorted(f"[rank {r}] {x}{r}" for x in "abc" for r in (0, 1))


def test_ranks_past_their_walltime_are_stopped_and_named(load_dfk):
    load_dfk(workers_per_node=2)
    started = time.monotonic()
    with pytest.raises(RankFailure) as info:
        spec = {"num_nodes": 1, "ranks_per_node": 2, "pmi": "none", "walltime": 2}
        ranks("sleep 60", parsl_resource_specification=spec).result(timeout=120)
    assert info.value.failed == [("rank 0", -2), ("rank 1", -2)]
    assert time.monotonic() - started < 30
