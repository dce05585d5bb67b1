"""The worker's side of a dropped link (server/worker.py): what it re-syncs and what it fails."""
import os
from collections import deque

import zmq

from parsl_dragon.core.accelerators import GPU_ENV_VARS
from parsl_dragon.errors import PAYLOAD_TOO_LARGE, SERIALIZATION_ERROR, TASK_LOST
from parsl_dragon.server import worker as worker_module
from parsl_dragon.server.worker import Worker, lost_in_flight
from parsl_dragon.wire import protocol as p


class Sent:
    def __init__(self):
        self.messages = []

    def send_multipart(self, frames):
        self.messages.append(p.decode(frames))


def worker():
    """A Worker without sockets: only the state the re-sync uses."""
    w = Worker.__new__(Worker)
    w.host, w.worker_id = "n1", "n1:1"
    w.socket = Sent()
    w.queue = deque()
    w.results, w.payloads, w.batch_bytes = [], [], 0
    w.link_down, w.answered_since_resync = False, None
    w.accelerators, w.retiring, w.stopping = None, False, False
    w.max_payload = 1 << 30
    w.shelf, w.keep_over = None, -1
    return w


def test_lost_in_flight_is_what_was_sent_and_is_neither_held_nor_answered():
    assert lost_in_flight([1, 2, 3, 4], {2, 4, 9}) == [1, 3]
    assert lost_in_flight([], {1}) == []


def test_a_link_that_comes_back_flushes_first_then_asks():
    w = worker()
    w.results, w.payloads = [p.TaskResult(task_id=5, status=p.OK)], [b"r"]
    w._on_link_event(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    assert w.socket.messages == [], "the first handshake is no reconnect"
    w._on_link_event(zmq.EVENT_DISCONNECTED)
    w._on_link_event(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    assert [type(m) for m in w.socket.messages] == [p.TaskResults, p.WorkerResync]
    assert w.answered_since_resync == set()


def test_the_mark_fails_exactly_the_tasks_lost_in_flight():
    w = worker()
    w._on_link_event(zmq.EVENT_DISCONNECTED)
    w._on_link_event(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    w.queue.append((p.TaskEntry(task_id=7), b"payload"))               # arrived: held
    w.results, w.payloads = [p.TaskResult(task_id=8, status=p.OK)], [b"r"]
    w._flush()                                                          # answered after the question
    w.results, w.payloads = [p.TaskResult(task_id=9, status=p.OK)], [b"r"]  # done, not yet flushed
    w._on_message(p.ResyncMark(assigned=[6, 7, 8, 9, 10]))
    lost = [(r.task_id, r.status, r.error_type) for r in w.results if r.error_type]
    assert lost == [(6, p.FAILED, TASK_LOST), (10, p.FAILED, TASK_LOST)]
    assert "lost in flight" in w.results[-1].error and w.answered_since_resync is None
    assert len(w.results) == len(w.payloads)


def test_a_mark_without_a_question_changes_nothing():
    w = worker()
    w._on_message(p.ResyncMark(assigned=[1, 2]))
    assert w.results == []


def test_a_result_over_max_payload_bytes_fails_as_payload_too_large(monkeypatch):
    w = worker()
    w.max_payload = 100
    monkeypatch.setattr(worker_module, "run_task",
                        lambda payload, keepable=False: (p.OK, b"r" * 1000, "", "builtins:bytes"))
    w.queue.append((p.TaskEntry(task_id=3), b"payload"))
    w._run_one()
    [result] = w.results
    assert (result.task_id, result.status, result.error_type) == (3, p.FAILED, PAYLOAD_TOO_LARGE)
    assert "result of task 3 is 1,000 bytes" in result.error and "over max_payload_bytes 100" in result.error
    assert w.payloads == [b""]
    assert worker_module.max_payload_bytes({"PARSL_DRAGON_MAX_PAYLOAD": "4096"}) == 4096
    assert worker_module.max_payload_bytes({"PARSL_DRAGON_MAX_PAYLOAD": "x"}) > 0, "unusable: the default"


def _megabytes(n):
    return b"m" * (n << 20)


def test_large_arguments_and_results_pass_without_parsls_overflow_warning(caplog):
    """Parsl's serialize() warns "this could cause overflows" past its buffer threshold; payloads
    of any size are framed here, so neither the driver's packing nor the worker's result warns."""
    import logging

    from parsl.serialize import deserialize, pack_apply_message

    from parsl_dragon.wire.frames import NO_SERIALIZER_WARNING
    with caplog.at_level(logging.WARNING):
        payload = pack_apply_message(_megabytes, (2,), {}, buffer_threshold=NO_SERIALIZER_WARNING)
        status, outcome, error, _ = worker_module.run_task(pack_apply_message(len, (b"x" * (3 << 20),), {},
                                                                              buffer_threshold=NO_SERIALIZER_WARNING))
        assert (status, deserialize(outcome), error) == (p.OK, 3 << 20, "")
        status, outcome, error, _ = worker_module.run_task(payload)
    assert status == p.OK and len(deserialize(outcome)) == 2 << 20 and not error
    assert not [r for r in caplog.records if "buffer threshold" in r.getMessage()], caplog.text


def test_an_exception_that_cannot_be_serialized_fails_as_serialization_error(monkeypatch):
    w = worker()
    monkeypatch.setattr(worker_module, "run_task",
                        lambda payload, keepable=False: (p.FAILED, b"", "could not be serialized", ""))
    w.queue.append((p.TaskEntry(task_id=4), b"payload"))
    w._run_one()
    [result] = w.results
    assert (result.task_id, result.status, result.error_type) == (4, p.FAILED, SERIALIZATION_ERROR)


def test_the_worker_logs_under_its_module_name():
    assert worker_module.logger.name == worker_module.__name__ == "parsl_dragon.server.worker"


def test_a_gpu_task_sees_its_own_devices_while_it_runs_and_the_next_task_does_not(monkeypatch):
    from parsl_dragon.core.placement import Placement
    from parsl_dragon.core.spec import TaskSpec
    w = worker()
    w.accelerators = ("0.0", "0.1", "1.0", "1.1")
    seen = []
    monkeypatch.setattr(worker_module, "run_task", lambda payload, keepable=False: (
        seen.append({v: os.environ.get(v) for v in GPU_ENV_VARS}) or (p.OK, b"r", "", "")))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("ZE_AFFINITY_MASK", "the node's own")
    gpu2 = TaskSpec(gpus_per_rank=2)
    w.queue.append((p.TaskEntry(task_id=1, spec=gpu2, placement=Placement(1, ("n1",), ((0,),), ((2, 3),))), b""))
    w.queue.append((p.TaskEntry(task_id=2), b""))  # no GPUs, no placement
    w._run_one()
    w._run_one()
    assert seen[0] == dict.fromkeys(GPU_ENV_VARS, "1.0,1.1"), "all three variables, the ids of its slots"
    assert seen[1] == {"CUDA_VISIBLE_DEVICES": None, "ROCR_VISIBLE_DEVICES": None,
                       "ZE_AFFINITY_MASK": "the node's own"}, "the worker's environment is back"
    assert [r.status for r in w.results] == [p.OK, p.OK]


def test_a_gpu_task_that_leaves_a_gpu_runtime_in_the_worker_makes_it_retire(monkeypatch, tmp_path):
    from parsl_dragon.core.placement import Placement
    from parsl_dragon.core.spec import TaskSpec
    from parsl_dragon.task import devices
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert devices.gpu_runtime_loaded(str(maps)) is None
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libcuda.so.550.54\n")
    assert devices.gpu_runtime_loaded(str(maps)) == "libcuda.so.550.54"
    assert devices.gpu_runtime_loaded(str(tmp_path / "absent")) is None

    w = worker()
    monkeypatch.setattr(worker_module, "run_task", lambda payload, keepable=False: (p.OK, b"r", "", "builtins:bytes"))
    monkeypatch.setattr(worker_module, "gpu_runtime_loaded", lambda: "libcuda.so.1")
    w.queue.append((p.TaskEntry(task_id=4), b""))  # no GPUs: not looked at
    w._run_one()
    assert not w.retiring
    gpu = TaskSpec(gpus_per_rank=1)
    w.queue.append((p.TaskEntry(task_id=5, spec=gpu, placement=Placement(5, ("n1",), ((0,),), ((0,),))), b""))
    w._run_one()
    assert w.retiring and w.stopping, "the run loop ends once the queue is empty"
    w._flush()
    [sent] = w.socket.messages
    assert sent.retiring and [r.task_id for r in sent.results] == [4, 5], "its results go out, marked"


class PartsShelf:
    """A stand-in for server/shelf.Shelf as a worker uses it: records the parts put; full on demand."""

    def __init__(self, full=False, sent=None):
        self.parts, self.full = {}, full
        self.sent_before_put = {} if sent is None else sent  # what the worker had sent when each put began
        self.socket = None

    def put(self, key, parts):
        if self.socket is not None:
            self.sent_before_put[key] = list(self.socket.messages)
        if self.full:
            from parsl_dragon.server.shelf import ShelfFull  # noqa: F401 (named for the reader: the real one)
            raise RuntimeError("the node's store has no room")
        self.parts[key] = list(parts)
        return 3


def _array(n):
    import numpy
    return numpy.arange(float(n))


def _fail():
    raise ValueError("nope")


def _run(w, func, args, spec):
    from parsl.serialize import pack_apply_message

    from parsl_dragon.core.spec import TaskSpec
    w.queue.append((p.TaskEntry(task_id=len(w.results) + 1, spec=TaskSpec(**spec)), pack_apply_message(func, args, {})))
    w._run_one()
    return w.results[-1], w.payloads[-1]


def test_a_kept_result_goes_on_the_shelf_as_the_codecs_parts_and_only_where_it_is_travels():
    from parsl_dragon.task import codec
    from parsl_dragon.wire import dataplane as d
    w = worker()
    w.shelf = PartsShelf()
    result, payload = _run(w, _array, (200_000,), {"keep_result": True})
    assert result.status == p.KEPT and payload == b""
    entry = d.KeptEntry.from_wire(result.kept)
    parts = w.shelf.parts[entry.key]
    assert entry.manager == 3 and entry.nbytes == sum(memoryview(part).nbytes for part in parts) > 1_600_000
    assert len(parts) == 2 and memoryview(parts[1]).nbytes == 1_600_000, "the array's memory is a part of its own"
    assert entry.type == "numpy:ndarray"
    assert (codec.decode(b"".join(parts)) == _array(200_000)).all()


def test_under_the_threshold_a_result_travels_in_the_kept_form_and_parsl_reads_it():
    from parsl.serialize import deserialize
    w = worker()
    w.shelf, w.keep_over = PartsShelf(), 1 << 20
    result, payload = _run(w, _array, (1000,), {})
    assert result.status == p.OK and not w.shelf.parts
    assert (deserialize(payload) == _array(1000)).all(), "Parsl's deserialize loads this form by its identifier"
    result, payload = _run(w, _array, (200_000,), {})
    assert result.status == p.KEPT and payload == b""


def test_a_result_the_shelf_cannot_take_travels_with_the_reason():
    from parsl_dragon.task import codec
    w = worker()
    w.shelf = PartsShelf(full=True)
    result, payload = _run(w, _array, (1000,), {"keep_result": True})
    assert result.status == p.OK and "could not take" in result.unkept and "no room" in result.unkept
    assert (codec.decode(payload) == _array(1000)).all()
    w.shelf = None
    result, payload = _run(w, _array, (10,), {"keep_result": True})
    assert result.status == p.OK and result.unkept == "the block's kept-results store is not available"


def test_an_exception_is_never_kept():
    from parsl.serialize import deserialize
    w = worker()
    w.shelf = PartsShelf()
    result, payload = _run(w, _fail, (), {"keep_result": True})
    assert result.status == p.EXCEPTION and not w.shelf.parts
    assert deserialize(payload).e_type is ValueError


def test_a_kept_result_releases_its_slot_before_it_is_stored_and_its_result_follows():
    w = worker()
    w.shelf = PartsShelf()
    w.shelf.socket = w.socket
    result, _ = _run(w, _array, (200_000,), {"keep_result": True})
    [release] = w.shelf.sent_before_put[f"t{result.task_id}"]
    assert isinstance(release, p.TaskResults) and release.released == [result.task_id] and not release.results
    w._flush()
    assert [m.results[0].task_id for m in w.socket.messages[1:]] == [result.task_id]
    assert w.socket.messages[1].released == []


def test_a_retiring_worker_and_a_result_that_travels_release_nothing():
    w = worker()
    w.shelf, w.keep_over = PartsShelf(), 1 << 20
    _run(w, _array, (1000,), {})  # under the threshold: travels, nothing to wait for
    w.retiring = True
    _run(w, _array, (1000,), {"keep_result": True})
    assert not w.socket.messages, "a retiring worker takes no next task"
