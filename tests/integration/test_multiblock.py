"""Several blocks of one executor: work spread over their servers, a block that dies or never
connects while the others carry on, and Parsl's strategy scaling blocks out and back in.

Each block here is a real single-node Dragon runtime started by Parsl's ``LocalProvider``
(two at once on this machine; one worker each, so the runtimes' busy-polling leaves room).
"""
import os
import signal

import pytest
from parsl import python_app
from parsl.jobs.states import TERMINAL_STATES, JobState
from parsl.providers import LocalProvider

from parsl_dragon import ServerLost
from parsl_dragon.driver.launchers import default_launcher
from parsl_dragon.wire.connection import read_connection
from tests.integration.test_slurm import wait_until

BLOCK_START = 240.0  # two runtimes starting at once on 2 cores


@python_app
def block_of_worker(seconds=0.0):
    import os
    import time
    time.sleep(seconds)
    return os.environ["PARSL_WORKER_BLOCK_ID"]


def provider(**kwargs):
    options = dict(init_blocks=2, min_blocks=0, max_blocks=2, launcher=default_launcher())
    options.update(kwargs)
    return LocalProvider(**options)


def connected_blocks(executor):
    with executor._lock:
        return sorted(s.block_id for s in executor._servers)


def test_tasks_are_spread_over_the_servers_of_two_blocks(load_dfk):
    dfk = load_dfk(provider=provider())
    executor = dfk.executors["dragon"]
    wait_until(lambda: connected_blocks(executor) == ["0", "1"], BLOCK_START, "both blocks' servers")
    blocks = [f.result(timeout=120) for f in [block_of_worker(1.0) for _ in range(8)]]
    assert sorted(set(blocks)) == ["0", "1"], f"tasks ran on blocks {blocks}"
    assert min(blocks.count("0"), blocks.count("1")) >= 2, f"the load is balanced: {blocks}"
    assert executor.workers_per_node == 1 and executor.outstanding() == 0


def test_a_block_that_dies_fails_its_tasks_and_the_other_carries_on(load_dfk):
    dfk = load_dfk(provider=provider(), heartbeat_period=1.0, heartbeat_threshold=2)
    executor = dfk.executors["dragon"]
    wait_until(lambda: connected_blocks(executor) == ["0", "1"], BLOCK_START, "both blocks' servers")
    running = [block_of_worker(30.0) for _ in range(2)]
    wait_until(lambda: all(s.tasks for s in executor._servers), 30, "a task on each server")
    victim = next(s for s in executor._servers if s.block_id == "0")
    task_of_victim = next(iter(victim.tasks))
    os.kill(read_connection(executor._launches["0"].connection_file).pid, signal.SIGKILL)

    lost = next(f for f in running if f.task_record["exec_fu"].parsl_executor_task_id == task_of_victim)
    survivor = next(f for f in running if f is not lost)
    with pytest.raises(ServerLost, match="block 0.*may be retried"):
        lost.result(timeout=30)
    assert not executor.bad_state_is_set, "one lost block of two does not fail the executor"
    wait_until(lambda: executor.status_facade["0"].state == JobState.FAILED, 10, "block 0 to be FAILED")
    assert survivor.result(timeout=120) == "1", "the task on the other block finished normally"
    later = [f.result(timeout=BLOCK_START) for f in [block_of_worker() for _ in range(4)]]
    assert "0" not in later, f"nothing is sent to the dead block: {later}"


def test_a_block_that_never_connects_is_missing_and_the_other_serves(load_dfk, tmp_path):
    # The first block to run its script hangs before booting (as a node with a broken
    # environment would); the second boots normally.
    hang = tmp_path / "first-block-hangs"
    worker_init = f"if mkdir {hang} 2>/dev/null; then sleep 600; fi"
    dfk = load_dfk(provider=provider(worker_init=worker_init), startup_timeout_ms=40_000)
    executor = dfk.executors["dragon"]
    results = [f.result(timeout=BLOCK_START) for f in [block_of_worker() for _ in range(4)]]
    assert len(set(results)) == 1, f"every task ran on the one block that connected: {results}"
    stuck = "1" if results[0] == "0" else "0"
    status = wait_until(lambda: executor.status_facade.get(stuck) if executor.status_facade.get(stuck)
                        and executor.status_facade[stuck].state == JobState.MISSING else None,
                        120, f"block {stuck} to be reported MISSING")
    assert f"block {stuck} did not start a Dragon server" in status.message
    assert not executor.bad_state_is_set
    assert block_of_worker().result(timeout=60) == results[0], "the executor goes on after the miss"


def test_strategy_scales_blocks_out_under_load_and_in_when_idle(load_dfk):
    # prefetch_capacity=0: each server holds only what its worker runs, so the block the
    # load starts second takes its share of the tasks already submitted.
    dfk = load_dfk(provider=provider(init_blocks=0), prefetch_capacity=0, config_options={"max_idletime": 3.0})
    executor = dfk.executors["dragon"]
    assert executor.blocks_to_job_id == {}, "no block before there is work"
    blocks = [f.result(timeout=BLOCK_START + 120) for f in [block_of_worker(4.0) for _ in range(6)]]
    assert len(executor.blocks_to_job_id) == 2, "the load scaled the executor out to max_blocks"
    assert sorted(set(blocks)) == ["0", "1"], f"tasks ran on both blocks it scaled out to: {blocks}"

    def all_scaled_in():
        status = executor.status_facade
        return status and all(s.state in TERMINAL_STATES for s in status.values()) and not executor._servers
    wait_until(all_scaled_in, 120, "idle blocks to be scaled in after max_idletime")
    assert not executor.bad_state_is_set, "scaling in is not a failure"
    again = block_of_worker().result(timeout=BLOCK_START)
    assert int(again) >= 2, f"new work after scale-in gets a new block, not an old one: {again}"


def test_with_retries_a_task_of_a_dead_block_is_rerun_on_the_other(load_dfk):
    dfk = load_dfk(provider=provider(), heartbeat_period=1.0, heartbeat_threshold=2, config_options={"retries": 1})
    executor = dfk.executors["dragon"]
    wait_until(lambda: connected_blocks(executor) == ["0", "1"], BLOCK_START, "both blocks' servers")
    first = block_of_worker(20.0)
    wait_until(lambda: any(s.tasks for s in executor._servers), 30, "the task on a server")
    doomed = next(s.block_id for s in executor._servers if s.tasks)
    os.kill(read_connection(executor._launches[doomed].connection_file).pid, signal.SIGKILL)
    rerun_on = first.result(timeout=120)
    assert rerun_on != doomed, "the retry ran on the surviving block"
    assert (first.task_record["fail_count"], first.task_record["try_id"]) == (1, 1), \
        "the first try failed (the lost server), the second succeeded"


@python_app
def kept_block_array(n, parsl_resource_specification={"keep_result": True}):
    import os
    return (os.environ["PARSL_WORKER_BLOCK_ID"], b"a" * n)


@python_app
def block_and_sizes(inputs=()):
    import os
    return os.environ["PARSL_WORKER_BLOCK_ID"], [(origin, len(data)) for origin, data in inputs]


def _kept_per_block(executor, count=6):
    """Kept results made on each block: {block id: reference}."""
    from parsl_dragon.task.kept import kept_of
    by_block = {}
    refs = [f.result(timeout=120) for f in [kept_block_array(1 << 16) for _ in range(count)]]
    servers = {s.server_id: s.block_id for s in executor._servers}
    for ref in refs:
        by_block.setdefault(servers[kept_of(ref).server_id], ref)
    return by_block


def test_tasks_reading_kept_results_run_on_the_block_that_holds_them(load_dfk):
    dfk = load_dfk(provider=provider())
    executor = dfk.executors["dragon"]
    wait_until(lambda: connected_blocks(executor) == ["0", "1"], BLOCK_START, "both blocks' servers")
    by_block = _kept_per_block(executor)
    assert sorted(by_block) == ["0", "1"], "the producers were spread over both blocks"
    before = executor.kept_bytes_read
    for holder, ref in by_block.items():
        ran = [f.result(timeout=120) for f in [block_and_sizes(inputs=[ref]) for _ in range(6)]]
        assert ran == [(holder, [(holder, 1 << 16)])] * 6, f"every reader of block {holder}'s result ran there"
    assert executor.kept_bytes_read == before, "nothing crossed the driver"
    mixed = block_and_sizes(inputs=[by_block["0"], by_block["1"]]).result(timeout=120)
    assert sorted(mixed[1]) == [("0", 1 << 16), ("1", 1 << 16)], "inputs from two blocks both arrive"
    assert executor.kept_bytes_read > before, "the input held by the other block was read in the driver"


def test_kept_results_of_a_lost_block_fail_with_result_lost_and_the_other_block_carries_on(load_dfk):
    from parsl_dragon import ResultLost
    from parsl_dragon.task.kept import kept_of
    dfk = load_dfk(provider=provider(), heartbeat_period=1.0, heartbeat_threshold=2)
    executor = dfk.executors["dragon"]
    wait_until(lambda: connected_blocks(executor) == ["0", "1"], BLOCK_START, "both blocks' servers")
    by_block = _kept_per_block(executor)
    lost_ref, kept_ref = by_block["0"], by_block["1"]
    task = kept_of(lost_ref).task_id
    os.kill(read_connection(executor._launches["0"].connection_file).pid, signal.SIGKILL)
    wait_until(lambda: connected_blocks(executor) == ["1"], 60, "the driver to see block 0's server gone")
    with pytest.raises(ResultLost, match=f"task {task}.*lost"):
        block_and_sizes(inputs=[lost_ref]).result(timeout=120)
    assert block_and_sizes(inputs=[kept_ref]).result(timeout=120) == ("1", [("1", 1 << 16)])


def _kept_bytes(n):
    return b"k" * n


def test_an_idle_block_holding_referenced_kept_results_is_not_scaled_in_until_they_are_released(load_dfk):
    """Through the executor (no AppFuture: a test's log capture keeps those, and their results)."""
    import gc
    import time

    from parsl_dragon.task.kept import kept_of
    dfk = load_dfk(provider=provider(init_blocks=1, max_blocks=1), config_options={"max_idletime": 1.0})
    executor = dfk.executors["dragon"]
    ref = executor.submit(_kept_bytes, {"keep_result": True}, 1000).result(timeout=BLOCK_START)  # not idle till then
    assert kept_of(ref) is not None
    time.sleep(6.0)  # max_idletime and several strategy periods: an idle block without references goes
    assert connected_blocks(executor) == ["0"], "the block holding a referenced result is still up"
    assert len(ref) == 1000, "and its result is readable"
    del ref
    gc.collect()
    wait_until(lambda: not executor._servers, 60, "the block to be scaled in once the reference is gone")
    assert not executor.bad_state_is_set
