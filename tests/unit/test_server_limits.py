"""What a server can hold (server/limits.py): its fd limit raised to the hard limit and logged,
and a clean refusal, naming the limit and the setting, of workers whose links would not fit.

Limits are lowered only in child processes (a hard limit, once lowered, cannot be raised back)."""
import os
import resource
import subprocess
import sys
import textwrap

import pytest

from parsl_dragon.errors import DragonExecutorError, ServerCapacityError
from parsl_dragon.server import limits
from parsl_dragon.server.backend import NodeInfo
from parsl_dragon.vocabulary import SERVER_REFUSED_FILE
from parsl_dragon.wire import security

HARD = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 2048)  # a child may lower its hard limit, not raise it
LOW = min(HARD, 1024)


def run_child(code: str, soft: int, hard: int) -> subprocess.CompletedProcess:
    """Run ``code`` in a Python child whose RLIMIT_NOFILE is (soft, hard)."""
    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          preexec_fn=lower, timeout=60)


class Backend:
    def __init__(self, nodes, workers_per_node=None, cpus=64):
        self.workers_per_node = workers_per_node
        self._nodes = [NodeInfo(f"n{i}", cpus, 0) for i in range(nodes)]

    def nodes(self):
        return self._nodes


def test_the_soft_limit_is_raised_to_the_hard_limit_and_both_are_logged():
    result = run_child("""
        import logging, resource
        logging.basicConfig(level=logging.INFO)
        from parsl_dragon.server import limits
        limit = limits.raise_fd_limit()
        print(limit.found, limit.soft, limit.hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    """, soft=256, hard=HARD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["256", str(HARD), str(HARD), str(HARD)]
    assert f"soft limit {HARD} (was 256), hard limit {HARD}" in result.stderr


def test_a_server_refuses_workers_whose_links_exceed_the_fd_limit_naming_numbers_and_settings():
    result = run_child("""
        from parsl_dragon.errors import ServerCapacityError
        from parsl_dragon.server import limits
        from parsl_dragon.server.backend import NodeInfo

        class Backend:
            workers_per_node = 200
            def nodes(self):
                return [NodeInfo(f"n{i}", 64, 0) for i in range(10)]
        try:
            limits.check_capacity(Backend())
        except ServerCapacityError as exc:
            print(exc)
    """, soft=512, hard=HARD)
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "2,000 worker links" in message and "3,024 file descriptors" in message
    assert f"limit (RLIMIT_NOFILE, ulimit -n) is {HARD:,}" in message and "soft limit found 512" in message
    assert "ulimit -Hn" in message and "workers_per_node" in message and "200 per node on 10 node(s)" in message


def test_workers_that_fit_pass_and_default_to_cores_minus_one():
    assert limits.planned_workers(Backend(3, cpus=8)) == 21
    limits.check_fds(1000, 10, limits.FdLimit(found=1024, soft=2048, hard=2048))  # 1000 + 1024 <= 2048


def test_memory_refusal_names_what_is_needed_and_available():
    limits.check_memory(10_000, 100, available=None)  # unknown: no refusal
    limits.check_memory(100, 1, available=8 << 30)
    with pytest.raises(ServerCapacityError) as caught:
        limits.check_memory(200_000, 2000, available=4 << 30)
    message = str(caught.value)
    assert "200,000 worker links" in message and "4,096 MiB available" in message and "workers_per_node" in message
    assert isinstance(caught.value, DragonExecutorError)


def test_available_memory_is_read_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    1000 kB\n")
    assert limits.available_memory_bytes(str(meminfo)) == 1000 * 1024
    assert limits.available_memory_bytes(str(tmp_path / "missing")) is None


def test_the_server_process_refuses_to_start_and_says_why_in_its_log(tmp_path):
    """server/main.py end to end (simulated nodes, so no Dragon): exit code 2, the reason in the
    log, no connection file, no worker link written."""
    keys = tmp_path / "keys"
    security.load_pair(str(keys), security.SERVER)
    security.load_pair(str(keys), security.CLIENT)
    block = tmp_path / "block"
    block.mkdir(mode=0o700)

    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (LOW, LOW))
    result = subprocess.run(
        [sys.executable, "-m", "parsl_dragon.server.main", "--connection-file", str(block / "connection.json"),
         "--log-file", str(block / "server.log"), "--key-dir", str(keys), "--simulated-nodes", "4",
         "--workers-per-node", "100", "--cores-per-node", "100"],
        capture_output=True, text=True, preexec_fn=lower, timeout=60,
        env=dict(os.environ, PARSL_DRAGON_LOCAL_LINKS="0"))
    log = (block / "server.log").read_text()
    assert result.returncode == 2, log
    assert "Server refuses to start: this server cannot hold 400 worker links" in log
    assert f"limit (RLIMIT_NOFILE, ulimit -n) is {LOW:,}" in log and "100 per node on 4 node(s)" in log
    assert not (block / "connection.json").exists() and not (block / "simulated-workers.json").exists()
    assert "cannot hold 400 worker links" in (block / SERVER_REFUSED_FILE).read_text()  # boot: no second attempt
