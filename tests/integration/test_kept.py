"""Kept results: values that stay in their block's Dragon DDict, used through references.

Real runtime, real DDict: a result kept by its task's ``keep_result`` key or by the executor's
``keep_results_over`` threshold, passed to another app (the real object inside it), used in the
driver (fetched once over the link), evicted when the driver lets go of it, refused by a full
store (the result travels, with one warning), lost with its block (``ResultLost``).
"""
import gc
import logging
import time

import pytest
from parsl import python_app

from parsl_dragon import ResultLost, is_kept
from parsl_dragon.host.processes import cpu_seconds, processes_with_token
from parsl_dragon.task.kept import KeptValue, kept_of
from parsl_dragon.wire.connection import connection_path, read_connection

KEEP = {"keep_result": True}


@python_app
def make_bytes(n, fill=b"k", parsl_resource_specification={}):
    return fill * n


def _fill(n):
    return b"f" * n


@python_app
def make_dict(parsl_resource_specification={}):
    return {"answer": 42, "items": list(range(5))}


@python_app
def describe(value, inputs=(), parsl_resource_specification={}):
    """What the task got: the real object, not a proxy (type(), not isinstance)."""
    return [type(value).__name__, len(value), [type(v).__name__ for v in inputs], sum(len(v) for v in inputs)]


def test_a_kept_result_is_a_reference_that_becomes_the_value_inside_the_next_task(load_dfk):
    load_dfk()
    ref = make_bytes(1 << 20, parsl_resource_specification=KEEP).result(timeout=120)
    assert is_kept(ref), "the future holds a reference, not the megabyte"
    assert isinstance(ref, KeptValue) or isinstance(ref, bytes)
    got = describe(ref, inputs=[ref, ref]).result(timeout=120)
    assert got == ["bytes", 1 << 20, ["bytes", "bytes"], 2 << 20], "the task saw real bytes"


def test_a_kept_result_used_in_the_driver_is_fetched_once_and_compares_equal(load_dfk):
    load_dfk()
    ref = make_dict(parsl_resource_specification=KEEP).result(timeout=120)
    assert is_kept(ref) and isinstance(ref, dict), "dict is imported here: isinstance answers without a read"
    assert ref["answer"] == 42 and ref["items"] == [0, 1, 2, 3, 4]
    assert ref == {"answer": 42, "items": list(range(5))}


def test_results_over_the_executor_threshold_are_kept_and_smaller_ones_travel(load_dfk):
    load_dfk(keep_results_over=64 << 10)
    small = make_bytes(1000).result(timeout=120)
    large = make_bytes(256 << 10).result(timeout=120)
    refused = make_bytes(256 << 10, parsl_resource_specification={"keep_result": False}).result(timeout=120)
    assert type(small) is bytes and not is_kept(small)
    assert is_kept(large) and len(large) == 256 << 10
    assert type(refused) is bytes, "keep_result False overrides the threshold"


def test_a_released_reference_is_evicted_from_the_block(load_dfk):
    """Through the executor (no DFK: its debug log records hold every AppFuture, and so every
    result, for as long as a test's log capture keeps them)."""
    load_dfk()
    executor = load_dfk.last.executors["dragon"]
    ref = executor.submit(_fill, KEEP, 1 << 20).result(timeout=120)
    kept = kept_of(ref)
    server_id = kept.server_id
    assert executor._kept.live(server_id) == 1
    copy = type(kept)(**{f: getattr(kept, f) for f in kept.__dataclass_fields__})  # reads, holds no reference
    assert len(copy.read()) > 1 << 20
    del ref, kept
    deadline = time.monotonic() + 30
    while executor._kept.live(server_id) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.1)
    assert executor._kept.live(server_id) == 0
    while time.monotonic() < deadline:  # the eviction runs on the server's I/O thread
        try:
            copy.read()
        except ResultLost as exc:
            assert "evicted" in str(exc) and f"task {copy.task_id}" in str(exc)
            break
        time.sleep(0.1)
    else:
        pytest.fail("the released result was not evicted")


def _cpu_seconds(pids):
    """CPU seconds each process (still there) has used so far."""
    return {pid: seconds for pid, seconds in ((pid, cpu_seconds(pid)) for pid in pids) if seconds is not None}


def test_an_idle_block_that_keeps_results_spins_no_core(load_dfk, tmp_path):
    """Dragon 0.15's DDict orchestrator looped on a poll that never waits: 96 % of a core for as
    long as the block kept results, and every DDict operation of a 2-core node waited for a CPU.
    server/shelf.py makes it wait; no process of the idle block may use a third of a core."""
    load_dfk(server_path=str(tmp_path))
    executor = load_dfk.last.executors["dragon"]
    ref = executor.submit(_fill, KEEP, 4096).result(timeout=120)
    assert kept_of(ref) is not None  # the block's DDict is up
    time.sleep(1.0)  # its start settles
    pids = processes_with_token(read_connection(connection_path(str(tmp_path))).block_token)
    before = _cpu_seconds(pids)
    time.sleep(3.0)
    after = _cpu_seconds(pids)
    used = {pid: after[pid] - before[pid] for pid in after if pid in before}
    assert len(used) >= 5, f"the block's processes were not found: {pids}"
    busiest = max(used, key=used.get)
    assert used[busiest] < 1.0, f"process {busiest} used {used[busiest]:.2f} s of CPU in 3 idle seconds"


def test_a_full_store_lets_the_result_travel_with_one_warning(load_dfk, caplog):
    load_dfk(kept_results_memory=8 << 20)
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.driver.kept"):
        values = [make_bytes(3 << 20, fill=bytes([65 + i]), parsl_resource_specification=KEEP) for i in range(3)]
        results = [f.result(timeout=120) for f in values]
    travelled = [r for r in results if not is_kept(r)]
    assert travelled, "an 8 MiB store cannot hold three 3 MiB results (each takes a 4 MiB block)"
    assert all(type(r) is bytes and len(r) == 3 << 20 for r in travelled), "nothing lost"
    assert [bytes(r)[:1] for r in results] == [b"A", b"B", b"C"]
    warnings = [r for r in caplog.records if "was not kept" in r.getMessage()]
    assert len(warnings) == 1, "one warning, not one per result"


def test_references_of_a_stopped_block_fail_with_result_lost_naming_the_task(load_dfk):
    dfk = load_dfk()
    ref = make_bytes(1000, parsl_resource_specification=KEEP).result(timeout=120)
    task = kept_of(ref).task_id
    dfk.cleanup()
    with pytest.raises(Exception) as caught:
        len(ref)
    chain = [caught.value, caught.value.__cause__, getattr(caught.value, "cause", None)]
    lost = [e for e in chain if isinstance(e, ResultLost)]
    assert lost and f"task {task}" in str(lost[0]) and "stopped" in str(lost[0])
