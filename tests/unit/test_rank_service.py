"""The worker's side of ``$PARSL_MPI_PREFIX``: the real bash prefix and the real rank service,
against a stand-in for the server's end of the link (real CURVE, real ZAP; no Dragon)."""
from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
import zmq

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.spec import normalize_spec
from parsl_dragon.task import mpi_env
from parsl_dragon.task.prefix import SCRIPT
from parsl_dragon.task.rank_service import RankService, exit_code
from parsl_dragon.vocabulary import ENV_TIMEOUT, ENV_WORKER_ADDRESS, ENV_WORKER_SECRET, ENV_WORKER_SERVER_KEY
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.security import ephemeral_pair

SPEC = normalize_spec({"num_nodes": 1, "ranks_per_node": 2, "pmi": "none"})
PLACEMENT = Placement(7, ("localhost",), ((0, 1),), ((),))


class FakeServer:
    """Answers each LaunchRanks from a thread: writes rank files as the server's ranks would,
    then replies with ``codes`` (or ``error``), echoing ``launch``."""

    def __init__(self, link, codes=(0, 0), error="", outputs=("", ""), after_s=0.0):
        self.link, self.codes, self.error, self.outputs, self.after_s = link, codes, error, outputs, after_s
        self.requests = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopped.set()
        self.thread.join(10)

    def _serve(self):
        while not self.stopped.is_set():
            if not self.link.sock.poll(100):
                continue
            identity, *frames = self.link.sock.recv_multipart()
            request = p.decode(frames)
            self.requests.append((identity, request))
            output_dir = os.path.join(request.cwd, f"server-out-{request.launch}")
            os.makedirs(output_dir, exist_ok=True)
            for rank, text in enumerate(self.outputs):
                with open(os.path.join(output_dir, f"rank-{rank}.out"), "w") as handle:
                    handle.write(text)
            time.sleep(self.after_s)
            reply = p.RanksDone(task_id=request.task_id, exit_codes=[] if self.error else list(self.codes),
                                labels=[] if self.error else [f"rank {i}" for i in range(len(self.codes))],
                                output_dir=output_dir, error=self.error, launch=request.launch)
            self.link.sock.send_multipart([identity, *p.encode(reply)])


@pytest.fixture
def serve(worker_link_server):
    """Start a FakeServer on the worker link; stopped before the link closes."""
    fakes = []

    def start(**kwargs):
        fakes.append(FakeServer(worker_link_server, **kwargs))
        return fakes[-1]
    yield start
    for fake in fakes:
        fake.stop()


@pytest.fixture
def service(worker_link_server):
    ranks = RankService("host:1")
    yield ranks
    ranks.close()
    assert not ranks._thread.is_alive()


@pytest.fixture
def task(service, monkeypatch):
    with mpi_env.mpi_task(7, SPEC, PLACEMENT) as running:
        service.begin(running)
        yield running
        service.end(running)


def prefix(command, cwd=None, timeout=30, env=None):
    return subprocess.run((env or os.environ)["PARSL_MPI_PREFIX"] + " " + command, shell=True, capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env=env)


def test_the_launch_names_the_task_the_exact_command_the_cwd_and_hides_the_secret(serve, task, tmp_path):
    fake = serve(outputs=("zero\n", "one\ntwo\n"))
    done = prefix("./sim 'a b' \"\\$HOME\"", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [(identity, request)] = fake.requests
    assert identity == b"host:1/ranks"
    assert request.task_id == 7 and request.argv == ["./sim", "a b", "$HOME"] and request.cwd == str(tmp_path)
    assert ENV_WORKER_SECRET not in request.env and request.env["PARSL_DRAGON_TASK"] == "7"
    assert done.stdout.splitlines() == ["[rank 0] zero", "[rank 1] one", "[rank 1] two"]
    assert not (tmp_path / "server-out-1").exists(), "the server's output directory is removed"
    assert sorted(os.listdir(task.directory)) == ["launch"], "reply FIFO and output files are gone"


def test_failing_ranks_set_the_exit_code_and_are_noted_in_the_report(serve, task, tmp_path):
    serve(codes=(0, 7, -9, 3))
    done = prefix("./sim", cwd=tmp_path)
    assert done.returncode == 7
    assert mpi_env.read_report(task.report) == ([("rank 1", 7), ("rank 2", -9), ("rank 3", 3)], "")
    assert exit_code([("rank 2", -9)]) == 1 and exit_code([]) == 0


def test_launches_of_one_task_accumulate_in_the_report(serve, task, tmp_path):
    serve(codes=(5, 0))
    assert prefix("./a", cwd=tmp_path).returncode == 5
    assert prefix("./b", cwd=tmp_path).returncode == 5
    assert mpi_env.read_report(task.report)[0] == [("rank 0", 5), ("rank 0", 5)]


def test_concurrent_launches_in_one_task_get_their_own_replies(serve, task, tmp_path):
    serve(outputs=("x\n",))
    done = prefix("./a & $PARSL_MPI_PREFIX ./b & $PARSL_MPI_PREFIX ./c & wait", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.count("[rank 0] x") == 3


def test_an_error_reply_fails_the_launch_saying_why(serve, task, tmp_path):
    serve(error="pmi='cray' needs Cray PMI")
    done = prefix("./sim", cwd=tmp_path)
    assert done.returncode == 1 and "pmi='cray' needs Cray PMI" in done.stderr
    assert mpi_env.read_report(task.report) == ([], "pmi='cray' needs Cray PMI")


def test_a_link_lost_while_the_ranks_run_fails_at_once(worker_link_server, task, tmp_path):
    def vanish():
        worker_link_server.sock.poll(10_000)
        worker_link_server.sock.recv_multipart()
        worker_link_server.sock.close(linger=0)
    threading.Thread(target=vanish, daemon=True).start()
    started = time.monotonic()
    done = prefix("./sim", cwd=tmp_path)
    assert done.returncode == 1 and "lost the link to the block's server" in done.stderr
    assert time.monotonic() - started < 10


def launch_with_a_new_service(task_id, cwd):
    """One launch through a rank service made from the environment now: (outcome, seconds)."""
    ranks = RankService(f"host:{task_id}")
    try:
        with mpi_env.mpi_task(task_id, SPEC, PLACEMENT) as running:
            ranks.begin(running)
            started = time.monotonic()
            done = prefix("./sim", cwd=cwd)
            return done, time.monotonic() - started
    finally:
        ranks.close()


def test_without_a_server_a_launch_gives_up_after_the_handshake_bound(monkeypatch, tmp_path):
    with zmq.Context() as context:
        silent = context.socket(zmq.ROUTER)  # accepts TCP, never completes a CURVE handshake
        port = silent.bind_to_random_port("tcp://127.0.0.1")
        keys = ephemeral_pair()
        monkeypatch.setenv(ENV_WORKER_ADDRESS, f"tcp://127.0.0.1:{port}")
        monkeypatch.setenv(ENV_WORKER_SECRET, keys.secret.decode())
        monkeypatch.setenv(ENV_WORKER_SERVER_KEY, ephemeral_pair().public.decode())
        monkeypatch.setenv(ENV_TIMEOUT, "1500")
        try:
            done, seconds = launch_with_a_new_service(8, tmp_path)
        finally:
            silent.close(linger=0)
    assert done.returncode == 1 and "within 1.5 s" in done.stderr and ENV_TIMEOUT in done.stderr
    assert 1.0 < seconds < 10


def test_a_refused_key_fails_at_once(worker_link_server, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_WORKER_SECRET, ephemeral_pair().secret.decode())  # not the key the server admits
    done, seconds = launch_with_a_new_service(9, tmp_path)
    assert done.returncode == 1 and "refused this worker's key" in done.stderr and seconds < 10


def test_a_prefix_whose_worker_is_gone_stops_waiting(tmp_path):
    with mpi_env.mpi_task(10, SPEC, PLACEMENT) as running:
        os.mkfifo(running.launch_fifo, 0o600)  # nobody reads it: the worker died
        dead = subprocess.Popen(["true"])
        dead.wait()
        env = dict(os.environ, PARSL_DRAGON_WORKER_PID=str(dead.pid))
        started = time.monotonic()
        done = prefix("./sim", cwd=tmp_path, env=env)
        assert done.returncode == 1 and f"the worker (pid {dead.pid}) that runs this task is gone" in done.stderr
        assert time.monotonic() - started < 10
        assert mpi_env.read_report(running.report)[1].startswith("the worker")


@pytest.mark.parametrize("unset", ["PARSL_DRAGON_RANK_DIR", "PARSL_DRAGON_WORKER_PID"])
def test_outside_an_mpi_task_it_names_what_is_missing(unset, tmp_path):
    with mpi_env.mpi_task(11, SPEC, PLACEMENT):
        env = {k: v for k, v in os.environ.items() if k != unset}
        done = prefix("./sim", cwd=tmp_path, env=env)
    assert done.returncode == 2 and "not inside an MPI task of DragonExecutor" in done.stderr and unset in done.stderr


def test_after_its_task_ended_it_says_so(tmp_path):
    with mpi_env.mpi_task(12, SPEC, PLACEMENT):
        env = dict(os.environ)
    done = prefix("./sim", cwd=tmp_path, env=env)
    assert done.returncode == 2 and "has ended" in done.stderr


def test_without_a_command_it_prints_its_usage():
    for words in (["dragon"], []):
        done = subprocess.run(["bash", SCRIPT, *words], capture_output=True, text=True, timeout=10)
        assert done.returncode == 2 and "usage: $PARSL_MPI_PREFIX COMMAND" in done.stderr


def test_a_closed_service_says_it_is_no_longer_alive(worker_link_server):
    ranks = RankService("host:4")
    assert ranks.alive
    ranks.close()
    assert not ranks.alive


def test_a_reply_split_by_the_prefix_s_read_timeout_is_read_whole(tmp_path):
    """bash reads a pipe byte by byte: its 2 s read timeout can fall between the bytes of the
    reply line; what it read before must count (a reply "13" is not "3", nor empty)."""
    with mpi_env.mpi_task(14, SPEC, PLACEMENT) as running:
        os.mkfifo(running.launch_fifo, 0o600)

        def slow_worker():
            fd = os.open(running.launch_fifo, os.O_RDONLY)
            pid = int(os.read(fd, 64).split(b"\n")[0])
            os.close(fd)
            reply = os.open(os.path.join(running.directory, f"reply.{pid}"), os.O_WRONLY)
            os.write(reply, b"1")
            time.sleep(2.5)  # past the prefix's read timeout, mid-line
            os.write(reply, b"3\n")
            os.close(reply)
        worker = threading.Thread(target=slow_worker, daemon=True)
        worker.start()
        done = prefix("./sim", cwd=tmp_path)
        worker.join(10)
    assert done.returncode == 13, done.stderr
