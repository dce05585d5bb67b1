"""RankLaunches: one thread per launch, replies to the service loop (woken through a pipe),
the start-up guard, cancellation, and which launches the server refuses.

The backend here is a stand-in object with ``run_ranks`` (the real one needs a Dragon
runtime; tests/unit/test_backend.py runs it against a fake Dragon); it lets a launch hang on
purpose, which no real PMI path may be made to do on this machine.
"""
import threading
import time

import pytest
import zmq

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.spec import TaskSpec, normalize_spec
from parsl_dragon.server.backend import MPIEXEC_REFUSED, RankJob, RankOutcome
from parsl_dragon.server.ranks import RankLaunches, job_from, refusal
from parsl_dragon.server.taskbook import Task
from parsl_dragon.wire import protocol as p


class Backend:
    """``hang``: never starts (a wedged wire-up) until released; ``run_until_cancelled``: started
    ranks that run until the launch is cancelled (``cancels`` records that it was)."""

    def __init__(self, outcome=None, hang=False, fail=None, run_until_cancelled=False, delay=0.0):
        self.outcome, self.hang, self.fail = outcome, hang, fail
        self.run_until_cancelled, self.delay = run_until_cancelled, delay
        self.release = threading.Event()
        self.cancels = []

    def run_ranks(self, job, on_started, cancel):
        if self.fail:
            raise self.fail
        if self.hang:
            self.release.wait(10)
            self.cancels.append(cancel.is_set())
            return RankOutcome([0], ["rank 0"])
        on_started()
        if self.run_until_cancelled:
            self.cancels.append(cancel.wait(10))
            return RankOutcome([-9], ["rank 0"])
        time.sleep(self.delay)
        return self.outcome


@pytest.fixture
def closing():
    """Launch tables made by a test, closed (pipe fds freed, launches cancelled) after it."""
    made = []
    yield lambda *args, **kwargs: made.append(RankLaunches(*args, **kwargs)) or made[-1]
    for launches in made:
        launches.close()


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
                                output_dir="/tmp/out-7", error="", launch=0)
    assert launches.running() == 0


def test_every_reply_echoes_the_launch_number(closing):
    launches = closing(Backend(RankOutcome([0], ["rank 0"])))
    launches.start(b"n1:1/ranks", job(), client_task_id=1, launch=5)
    launches.start(b"n1:1/ranks", job(), client_task_id=1, launch=6)
    replies = wait_for_replies(launches)
    while len(replies) < 2:
        replies += wait_for_replies(launches)
    assert sorted(reply.launch for _, reply in replies) == [5, 6]
    failing = closing(Backend(fail=RuntimeError("boom")))
    failing.start(b"n1:1/ranks", job(), client_task_id=1, launch=8)
    [(_, reply)] = wait_for_replies(failing)
    assert reply.launch == 8 and "boom" in reply.error
    hanging = Backend(hang=True)
    overdue = closing(hanging, start_timeout_ms=100, per_rank_ms=0)
    overdue.start(b"n1:1/ranks", job(), client_task_id=1, launch=9)
    [(_, reply)] = wait_for_replies(overdue)
    assert reply.launch == 9 and "did not start within" in reply.error
    hanging.release.set()


def test_a_finished_launch_wakes_the_service_loop_at_once(closing):
    launches = closing(Backend(RankOutcome([0], ["rank 0"]), delay=0.3))
    poller = zmq.Poller()
    poller.register(launches.wakeup, zmq.POLLIN)
    launches.start(b"h", job(), client_task_id=1)
    assert poller.poll(timeout=100) == [], "nothing to say while the ranks run"
    begun = time.monotonic()
    assert poller.poll(timeout=2000), "the launch's thread wakes the poller"
    assert time.monotonic() - begun < 0.4
    [(_, reply)] = launches.finished()
    assert reply.exit_codes == [0]
    assert poller.poll(timeout=0) == [], "finished() drained the wake-up"


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
    assert backend.cancels == [True], "ranks that start after all are told to stop"


def test_a_task_that_ends_stops_its_launch_and_nothing_more_is_answered(closing):
    backend = Backend(run_until_cancelled=True)
    launches = closing(backend)
    launches.start(b"n1:1/ranks", job(task_id=7), client_task_id=1, launch=1)
    launches.start(b"n1:2/ranks", job(task_id=8), client_task_id=2, launch=1)
    time.sleep(0.1)
    assert launches.cancel_task(7) == [] and launches.running() == 1
    deadline = time.monotonic() + 2
    while not backend.cancels and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.cancels == [True], "task 7's ranks were stopped, task 8's run on"
    time.sleep(0.1)
    assert launches.finished() == []
    assert launches.cancel_task(99) == [], "a task without launches: nothing to do"


def test_a_cancel_with_a_reason_answers_whoever_still_waits(closing):
    launches = closing(Backend(run_until_cancelled=True))
    launches.start(b"n1:1/ranks", job(task_id=7), client_task_id=1, launch=3)
    [(identity, reply)] = launches.cancel_task(7, "the task's client is gone")
    assert identity == b"n1:1/ranks" and reply.launch == 3 and reply.error == "the task's client is gone"
    assert launches.cancel_task(7, "again") == [], "answered once"
    time.sleep(0.2)
    assert launches.finished() == [] and launches.running() == 0


def test_close_stops_every_launch():
    backend = Backend(run_until_cancelled=True)
    launches = RankLaunches(backend)
    launches.start(b"h", job(), client_task_id=1)
    time.sleep(0.1)
    launches.close()
    launches.close()  # idempotent
    deadline = time.monotonic() + 2
    while not backend.cancels and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.cancels == [True] and launches.finished() == []


def test_the_server_refuses_mpiexec_launches_and_tasks_it_does_not_run():
    message = p.LaunchRanks(task_id=4, argv=["./a.out"], cwd="/", launch=2)
    placement = Placement(4, ("n1",), ((0,),), ((),))
    mpiexec = Task(b"c1", 40, normalize_spec({"num_ranks": 2, "pmi": "mpiexec"}), b"", placement)
    reply = refusal(message, mpiexec)
    assert reply.error == MPIEXEC_REFUSED and reply.launch == 2 and reply.exit_codes == []
    assert "started by mpiexec itself, not by the server" in reply.error
    assert "no running MPI task 4" in refusal(message, None).error
    assert "no running MPI task 4" in refusal(message, Task(b"c1", 40, TaskSpec(), b"")).error
    none = Task(b"c1", 40, normalize_spec({"num_ranks": 2, "pmi": "none"}), b"", placement)
    assert refusal(message, none) is None


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
    assert built.cores == [list(range(8))] * 2 and built.gpus == [["0", "1", "2", "3"]] * 2
    assert built.gpus_per_rank == 1
    tiles = job_from(message, spec, placement, "/out", ("0.0", "0.1", "1.0", "1.1"))
    assert tiles.gpus == [["0.0", "0.1", "1.0", "1.1"]] * 2, "slot numbers become available_accelerators ids"
    assert built.cpu_bind and built.walltime == 30.0 and built.launcher_options == "--bind-to core"
    assert built.env == {"A": "1"} and built.output_dir == "/out"


def test_job_from_takes_the_defaults_the_driver_filled_in():
    message = p.LaunchRanks(task_id=9, argv=["./sim"], cwd="/w")
    placement = Placement(9, ("n1",), ((0,),), ((),))
    built = job_from(message, normalize_spec({"num_nodes": 1}, default_pmi="mpiexec"), placement, "/o")
    assert (built.pmi, built.ranks_per_node, built.cpus_per_rank, built.gpus_per_rank) == ("mpiexec", 1, 1, 0)
    assert not built.cpu_bind and built.launcher_options == "" and built.walltime is None
