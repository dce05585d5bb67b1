"""Rank launches in server/backend.py against a fake Dragon (no runtime): one Process per rank
for ``pmi="none"``, one Global Services wait that returns when the last rank exits, the
walltime, cancellation, a partial start, and the ``mpiexec`` refusal. The real runtime runs the
same code in tests/integration/test_mpi.py."""
import enum
import threading
import time

import pytest

from parsl_dragon.server import backend
from parsl_dragon.server.backend import MPIEXEC_REFUSED, WALLTIME_EXIT, RankJob, run_ranks


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
        self.made, self.killed, self.joins = [], [], 0

    def process_class(self):
        """A stand-in for ``dragon.native.process.Process`` that records into this fake."""
        fake = self

        class Process:
            DEVNULL = -3

            def __init__(self, **kwargs):
                self.kwargs, self.puid = kwargs, None
                fake.made.append(self)

            def start(self):
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
        self.killed.append(puid)
        self.exits[puid] = (time.monotonic(), -9)


@pytest.fixture
def dragon(monkeypatch):
    def install(runs, fail_start_of=None):
        fake = FakeDragon(runs, fail_start_of)
        api = (fake.process_class(), fake.multi_join, fake.kill, Errors)
        monkeypatch.setattr(backend, "_import_rank_api", lambda: api)
        monkeypatch.setattr(backend, "_import_dragon", lambda: (Policy, None, None, None, None))
        return fake
    return install


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
    monkeypatch.setattr(backend, "_import_rank_api", lambda: pytest.fail("nothing may start"))
    outcome = run_ranks(job(tmp_path, "go", pmi="mpiexec"))
    assert outcome.exit_codes == [] and outcome.error == MPIEXEC_REFUSED
    assert not (tmp_path / "out").exists()
