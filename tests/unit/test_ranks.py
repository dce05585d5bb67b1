"""RankLaunches: one thread per launch, replies to the service loop, and the start-up guard.

The backend here is a stand-in object with ``run_ranks`` (the real one needs a Dragon
runtime and is exercised by tests/integration/test_mpi.py); it lets a launch hang on
purpose, which no real PMI path may be made to do on this machine.
"""
import threading
import time

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.spec import normalize_spec
from parsl_dragon.server.backend import RankJob, RankOutcome
from parsl_dragon.server.ranks import RankLaunches, job_from
from parsl_dragon.wire import protocol as p


class Backend:
    def __init__(self, outcome=None, hang=False, fail=None):
        self.outcome, self.hang, self.fail = outcome, hang, fail
        self.release = threading.Event()

    def run_ranks(self, job, on_started):
        if self.fail:
            raise self.fail
        if self.hang:
            self.release.wait(10)  # never calls on_started: a wedged wire-up
            return RankOutcome([0], ["rank 0"])
        on_started()
        return self.outcome


def job(task_id=7, hosts=("n1",), ranks_per_node=1):
    return RankJob(task_id=task_id, argv=["true"], cwd="/", env={}, hosts=list(hosts),
                   ranks_per_node=ranks_per_node, output_dir="/tmp/out-7")


def wait_for_replies(launches, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = launches.finished()
        if replies:
            return replies
        time.sleep(0.02)
    return []


def test_completed_launch_is_answered_with_codes_and_labels():
    launches = RankLaunches(Backend(RankOutcome([0, 3], ["rank 0", "rank 1"])))
    launches.start(b"helper", job(), client_task_id=42)
    [(identity, reply)] = wait_for_replies(launches)
    assert identity == b"helper"
    assert reply == p.RanksDone(task_id=7, exit_codes=[0, 3], labels=["rank 0", "rank 1"],
                                output_dir="/tmp/out-7", error="")
    assert launches.running() == 0


def test_backend_exception_becomes_an_error_reply_not_a_crash():
    launches = RankLaunches(Backend(fail=RuntimeError("pmi exploded")))
    launches.start(b"helper", job(), client_task_id=1)
    [(_, reply)] = wait_for_replies(launches)
    assert reply.exit_codes == [] and "pmi exploded" in reply.error


def test_launch_that_never_starts_is_answered_and_abandoned():
    backend = Backend(hang=True)
    launches = RankLaunches(backend, start_timeout_ms=300)
    launches.start(b"helper", job(), client_task_id=1)
    [(_, reply)] = wait_for_replies(launches)
    assert "did not start within" in reply.error and "abandoned" in reply.error
    backend.release.set()  # the stuck thread finishes late: its result must not be sent again
    time.sleep(0.3)
    assert launches.finished() == [] and launches.running() == 0


def test_start_limit_grows_with_the_rank_count():
    launches = RankLaunches(Backend(), start_timeout_ms=60_000, per_rank_ms=10)
    assert launches.start_limit(1) == 60.01
    assert launches.start_limit(10_000) == 160.0
    assert RankLaunches(Backend(), start_timeout_ms=-1).start_limit(10_000) is None


def test_a_larger_launch_gets_longer_before_it_is_abandoned():
    small, large = Backend(hang=True), Backend(hang=True)
    small_launches = RankLaunches(small, start_timeout_ms=200, per_rank_ms=100)
    large_launches = RankLaunches(large, start_timeout_ms=200, per_rank_ms=100)
    small_launches.start(b"h", job(), client_task_id=1)                                   # 0.3 s
    large_launches.start(b"h", job(hosts=["n1", "n2"], ranks_per_node=4), client_task_id=2)  # 1.0 s
    [(_, reply)] = wait_for_replies(small_launches, timeout=0.8)
    assert "did not start within 0.3s" in reply.error
    assert large_launches.finished() == [], "8 ranks are not abandoned after the 1-rank limit"
    [(_, reply)] = wait_for_replies(large_launches, timeout=3.0)
    assert "did not start within 1.0s" in reply.error and "PARSL_DRAGON_RANK_STARTUP_TIMEOUT" in reply.error
    small.release.set()
    large.release.set()


def test_no_limit_never_abandons_a_slow_launch():
    backend = Backend(hang=True)
    launches = RankLaunches(backend, start_timeout_ms=-1)
    launches.start(b"h", job(), client_task_id=1)
    time.sleep(0.5)
    assert launches.finished() == [] and launches.running() == 1
    backend.release.set()  # the hanging stand-in then returns rank 0's outcome
    [(_, reply)] = wait_for_replies(launches)
    assert reply.exit_codes == [0] and reply.error == ""


def test_job_from_uses_spec_and_placement():
    message = p.LaunchRanks(task_id=9, argv=["./sim"], cwd="/w", env={"A": "1"})
    spec = normalize_spec({"num_nodes": 2, "ranks_per_node": 4, "pmi": "none", "cpus_per_rank": 2,
                           "gpus_per_rank": 1, "cpu_bind": True, "walltime": 30, "launcher_options": "--bind-to core"})
    placement = Placement(9, ("n1", "n2"), (tuple(range(8)),) * 2, ((0, 1, 2, 3),) * 2)
    built = job_from(message, spec, placement, "/out")
    assert (built.hosts, built.ranks_per_node, built.pmi, built.cpus_per_rank) == (["n1", "n2"], 4, "none", 2)
    assert built.cores == [list(range(8))] * 2 and built.gpus == [[0, 1, 2, 3]] * 2 and built.gpus_per_rank == 1
    assert built.cpu_bind and built.walltime == 30.0 and built.launcher_options == "--bind-to core"
    assert built.env == {"A": "1"} and built.output_dir == "/out"


def test_job_from_takes_the_defaults_the_driver_filled_in():
    message = p.LaunchRanks(task_id=9, argv=["./sim"], cwd="/w")
    placement = Placement(9, ("n1",), ((0,),), ((),))
    built = job_from(message, normalize_spec({"num_nodes": 1}, default_pmi="mpiexec"), placement, "/o")
    assert (built.pmi, built.ranks_per_node, built.cpus_per_rank, built.gpus_per_rank) == ("mpiexec", 1, 1, 0)
    assert not built.cpu_bind and built.launcher_options == "" and built.walltime is None
