"""server/backend.py against a fake Dragon (no runtime).

Workers: one Process each, placed per node; deaths learnt from one Global Services request
per poll, each reported once and replaced on its node, never while stopping; stop() lets
them exit, then SIGTERM, then SIGKILL. Rank launches: one Process per rank for
``pmi="none"``, one Global Services wait that returns when the last rank exits, the walltime,
cancellation, a partial start, and the ``mpiexec`` refusal. The real runtime runs the same
code in tests/integration (test_faults.py, test_lifecycle.py, test_mpi.py)."""
import enum
import os
import signal
import sys
import threading
import time

import pytest

from parsl_dragon.server import backend
from parsl_dragon.server.backend import MPIEXEC_REFUSED, WALLTIME_EXIT, DragonBackend, RankJob, run_ranks


class Errors(enum.Enum):
    SUCCESS = 0
    UNKNOWN = 1
    TIMEOUT = 2
    PENDING = 4


class Policy:
    class Placement:
        HOST_NAME = "host"

    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeDragon:
    """Processes that exit ``runs[command]`` seconds after they start (None: until killed)."""

    def __init__(self, runs, fail_start_of=None):
        self.runs, self.fail_start_of = runs, fail_start_of
        self.exits = {}  # puid -> (monotonic exit time or None, code)
        self.made, self.killed, self.signals, self.joins = [], [], [], 0
        self.ignored = set()  # signals the processes survive
        self.lock = threading.Lock()  # workers are started from several threads at once

    def process_class(self):
        """A stand-in for ``dragon.native.process.Process`` that records into this fake."""
        fake = self

        class Process:
            DEVNULL = -3

            def __init__(self, **kwargs):
                self.kwargs, self.puid = kwargs, None
                fake.made.append(self)

            def start(self):
                with fake.lock:
                    if len(fake.exits) == fake.fail_start_of:
                        raise RuntimeError("no room on the node")
                    self.puid = 100 + len(fake.exits)
                    run, code = fake.runs[self.kwargs["args"][-1]]
                    fake.exits[self.puid] = (None if run is None else time.monotonic() + run, code)
        return Process

    def multi_join(self, puids, timeout, join_all):
        self.joins += 1
        ends = [self.exits[puid][0] for puid in puids]
        done_by = None if None in ends else max(ends)
        now = time.monotonic()
        time.sleep(max(0.0, min(timeout, (done_by or now + timeout) - now)))
        now = time.monotonic()
        status = {str(puid): ([Errors.SUCCESS.value, self.exits[puid][1]] if self.exits[puid][0] is not None
                              and self.exits[puid][0] <= now else [Errors.TIMEOUT.value, None]) for puid in puids}
        return None, status

    def kill(self, puid, sig):
        self.signals.append((puid, sig))
        if sig in self.ignored:
            return
        self.killed.append(puid)
        self.exits[puid] = (time.monotonic(), -sig)

    def die(self, puid, code):
        """The process exits now with ``code``, on its own."""
        self.exits[puid] = (time.monotonic(), code)

    def started(self):
        """(puid, host) of every process started, by puid."""
        return sorted((process.puid, process.kwargs["args"][-1]) for process in self.made if process.puid is not None)

    def on(self, host):
        """The puids of the processes started on ``host``."""
        return [puid for puid, where in self.started() if where == host]


@pytest.fixture
def dragon(monkeypatch):
    def install(runs, fail_start_of=None):
        fake = FakeDragon(runs, fail_start_of)
        api = (fake.process_class(), fake.multi_join, fake.kill, Errors)
        monkeypatch.setattr(backend, "_import_process_api", lambda: api)
        monkeypatch.setattr(backend, "_import_dragon", lambda: (Policy, Node, System, None, None))
        return fake
    return install


class System:
    nodes = [1, 2]


class Node:
    """n1 with 3 cpus, n2 with 2 (default workers: 2 and 1)."""

    def __init__(self, h_uid):
        self.hostname, self.num_cpus, self.num_gpus = f"n{h_uid}", 4 - h_uid, 0


@pytest.fixture
def workers(dragon):
    """A backend whose three workers (two on n1, one on n2) run until they die or are killed."""
    fake = dragon({"n1": (None, 0), "n2": (None, 0)})
    workers = DragonBackend()
    assert workers.start_workers("tcp://10.0.0.1:5", {"PARSL_X": "1"}, "/w") == 3
    return fake, workers


def test_each_worker_is_its_own_process_placed_on_its_node(workers):
    fake, workers = workers
    assert len(fake.on("n1")) == 2 and len(fake.on("n2")) == 1 and workers.expected_workers() == 3
    for process in fake.made:
        host = process.kwargs["args"][-1]
        assert process.kwargs["target"] == sys.executable and process.kwargs["cwd"] == "/w"
        assert process.kwargs["args"] == ["-m", "parsl_dragon.server.worker", host]
        assert process.kwargs["env"]["PARSL_X"] == "1" and process.kwargs["env"]["PATH"] == os.environ["PATH"]
        assert process.kwargs["policy"].kwargs == {"placement": "host", "host_name": host}


def test_workers_that_did_start_are_stopped_when_another_could_not(dragon):
    fake = dragon({"n1": (None, 0), "n2": (None, 0)}, fail_start_of=2)
    workers = DragonBackend()
    with pytest.raises(RuntimeError, match="no room"):
        workers.start_workers("tcp://10.0.0.1:5", {}, "/w")
    fake.ignored = {signal.SIGTERM}
    workers.stop(patience=0.05)
    assert sorted(fake.killed) == [100, 101]


def test_a_dead_worker_is_reported_once_and_replaced_on_its_node(workers):
    fake, workers = workers
    assert workers.dead_workers() == [] and fake.joins == 1, "one request per poll, nothing exited"
    n1, [n2] = fake.on("n1"), fake.on("n2")
    fake.die(n2, 1)
    fake.die(n1[0], -9)
    assert sorted(workers.dead_workers()) == sorted([(n1[0], -9), (n2, 1)]) and fake.joins == 2
    assert len(fake.on("n1")) == 3 and len(fake.on("n2")) == 2, "one replacement on each dead worker's node"
    assert workers.dead_workers() == [] and workers.expected_workers() == 3


def test_a_replacement_that_cannot_start_is_tried_again_at_the_next_poll(workers):
    fake, workers = workers
    [n2] = fake.on("n2")
    fake.die(n2, -9)
    fake.fail_start_of = len(fake.exits)
    assert workers.dead_workers() == [(n2, -9)] and len(fake.started()) == 3
    fake.fail_start_of = None
    assert workers.dead_workers() == [] and fake.started()[3:] == [(103, "n2")]


def test_an_unanswered_poll_reports_nothing_and_the_next_one_catches_up(workers, monkeypatch):
    fake, workers = workers
    fake.die(100, 0)
    real = backend._import_process_api()

    def refusing(*args, **kwargs):
        raise RuntimeError("Global Services is busy")
    monkeypatch.setattr(backend, "_import_process_api", lambda: (real[0], refusing, real[2], real[3]))
    assert workers.dead_workers() == []
    monkeypatch.setattr(backend, "_import_process_api", lambda: real)
    assert workers.dead_workers() == [(100, 0)]


def test_stop_lets_workers_exit_and_replaces_none(workers):
    fake, workers = workers
    for puid in (100, 101, 102):  # they exit on the server's StopWorker, a moment later
        fake.exits[puid] = (time.monotonic() + 0.05, 0)
    begun = time.monotonic()
    workers.stop(patience=2.0)
    assert time.monotonic() - begun < 1.0, "returns as the last worker exits"
    assert fake.signals == [] and len(fake.started()) == 3
    assert workers.dead_workers() == [] and len(fake.started()) == 3


def test_no_replacement_when_the_caller_says_it_is_stopping(workers):
    fake, workers = workers
    fake.exits[101] = (time.monotonic(), -15)  # e.g. a teardown's SIGTERM, which the server also got
    time.sleep(0.01)
    assert workers.dead_workers(replace=lambda: False) == [(101, -15)] and len(fake.started()) == 3


def test_stop_terminates_then_kills_what_is_left(workers):
    fake, workers = workers
    fake.ignored = {signal.SIGTERM}
    fake.die(101, 0)
    workers.stop(patience=0.1)
    assert set(fake.signals) == {(puid, sig) for puid in (100, 102) for sig in (signal.SIGTERM, signal.SIGKILL)}
    assert [sig for _, sig in fake.signals] == [signal.SIGTERM] * 2 + [signal.SIGKILL] * 2, "TERM first, then KILL"
    assert sorted(fake.killed) == [100, 102] and len(fake.started()) == 3


def job(tmp_path, command, ranks=2, walltime=None, pmi="none"):
    return RankJob(task_id=3, argv=["./sim", command], cwd="/w", env={"A": "1"}, hosts=["n1"], ranks_per_node=ranks,
                   pmi=pmi, cores=[[4, 5]], cpu_bind=True, walltime=walltime, output_dir=str(tmp_path / "out"))


def test_one_process_per_rank_and_the_reply_comes_when_the_last_rank_exits(dragon, tmp_path):
    fake = dragon({"go": (0.05, 0)})
    started = []
    begun = time.monotonic()
    outcome = run_ranks(job(tmp_path, "go"), lambda: started.append(True))
    assert time.monotonic() - begun < backend.JOIN_SLICE, "no polling interval between exit and reply"
    assert outcome.exit_codes == [0, 0] and outcome.labels == ["rank 0", "rank 1"] and started == [True]
    first, second = (process.kwargs for process in fake.made)
    out = str(tmp_path / "out")
    assert first["target"] == "/bin/sh" and first["args"][-2:] == ["./sim", "go"]
    assert first["args"][3:5] == [f"{out}/rank-0.out", f"{out}/rank-0.err"]
    assert second["env"] == {"A": "1", "PARSL_RANK": "1", "PARSL_LOCAL_RANK": "1", "PARSL_NODE_RANK": "0"}
    assert second["policy"].kwargs == {"placement": "host", "host_name": "n1", "cpu_affinity": [5]}
    assert (tmp_path / "out").is_dir()


def test_ranks_still_running_at_the_walltime_are_killed(dragon, tmp_path):
    fake = dragon({"go": (None, 0)})
    begun = time.monotonic()
    outcome = run_ranks(job(tmp_path, "go", walltime=0.2))
    assert 0.2 <= time.monotonic() - begun < 1.0
    assert outcome.exit_codes == [WALLTIME_EXIT, WALLTIME_EXIT] and sorted(fake.killed) == [100, 101]


def test_a_cancelled_launch_kills_its_ranks_within_a_join_slice(dragon, tmp_path):
    fake = dragon({"go": (None, 0)})
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    begun = time.monotonic()
    run_ranks(job(tmp_path, "go"), cancel=cancel)
    assert time.monotonic() - begun < 0.1 + backend.JOIN_SLICE + 0.3
    assert sorted(fake.killed) == [100, 101]


def test_a_rank_that_cannot_start_stops_those_already_started(dragon, tmp_path):
    fake = dragon({"go": (None, 0)}, fail_start_of=1)
    started = []
    outcome = run_ranks(job(tmp_path, "go"), lambda: started.append(True))
    assert outcome.exit_codes == [] and "rank 1 could not be started" in outcome.error
    assert "no room on the node" in outcome.error and "were stopped" in outcome.error
    assert fake.killed == [100] and started == []


def test_mpiexec_ranks_are_refused_before_anything_starts(monkeypatch, tmp_path):
    monkeypatch.setattr(backend, "_import_process_api", lambda: pytest.fail("nothing may start"))
    outcome = run_ranks(job(tmp_path, "go", pmi="mpiexec"))
    assert outcome.exit_codes == [] and outcome.error == MPIEXEC_REFUSED
    assert not (tmp_path / "out").exists()
