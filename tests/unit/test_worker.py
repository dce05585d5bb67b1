"""The worker's side of a dropped link (server/worker.py): what it re-syncs and what it fails."""
from collections import deque

import zmq

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


def test_a_result_over_the_message_limit_fails_as_payload_too_large(monkeypatch):
    w = worker()
    monkeypatch.setattr(p, "MAX_FRAME_BYTES", 100)
    monkeypatch.setattr(worker_module, "run_task", lambda payload: (p.OK, b"r" * 1000, ""))
    w.queue.append((p.TaskEntry(task_id=3), b"payload"))
    w._run_one()
    [result] = w.results
    assert (result.task_id, result.status, result.error_type) == (3, p.FAILED, PAYLOAD_TOO_LARGE)
    assert "result of task 3" in result.error and w.payloads == [b""]


def test_an_exception_that_cannot_be_serialized_fails_as_serialization_error(monkeypatch):
    w = worker()
    monkeypatch.setattr(worker_module, "run_task", lambda payload: (p.FAILED, b"", "could not be serialized"))
    w.queue.append((p.TaskEntry(task_id=4), b"payload"))
    w._run_one()
    [result] = w.results
    assert (result.task_id, result.status, result.error_type) == (4, p.FAILED, SERIALIZATION_ERROR)


def test_the_worker_logs_under_its_module_name():
    assert worker_module.logger.name == worker_module.__name__ == "parsl_dragon.server.worker"
