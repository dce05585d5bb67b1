"""The monitoring radio (task/monitoring.py) against a real CURVE ROUTER standing in for the
block's backend socket: what a sender puts on the wire, one link per process (a forked child
opens its own), delivery by a sender dropped right after sending, and the no-op receiver."""
import gc
import multiprocessing
import os
import pickle
import warnings

import pytest
from parsl.monitoring.message_type import MessageType
from parsl.monitoring.radios.base import MonitoringRadioReceiver, MonitoringRadioSender, RadioConfig

from parsl_dragon.task import monitoring
from parsl_dragon.task.monitoring import DragonRadio
from parsl_dragon.vocabulary import WORKER_LINK_VARS
from parsl_dragon.wire import protocol as p

WAIT_MS = 5000
RECORD = (MessageType.RESOURCE_INFO, {"run_id": "r1", "task_id": 3, "try_id": 0, "psutil_process_pid": 42})


@pytest.fixture
def backend(worker_link_server):
    """The block's backend socket: ``worker_link_server`` of conftest.py (a CURVE ROUTER admitting
    only the worker key, real ZAP), with the worker-link variables pointing at it in ``os.environ``."""
    return worker_link_server.sock


@pytest.fixture
def senders():
    """Senders made by a test; their sockets' contexts are destroyed afterwards."""
    made = []
    yield made
    for sender in made:
        if sender._socket is not None:
            sender._socket.context.destroy(linger=0)


def receive(sock):
    """(identity of the peer, decoded message) of the next message, or fail after WAIT_MS."""
    assert sock.poll(WAIT_MS), "no message reached the server"
    identity, *frames = sock.recv_multipart()
    return identity, p.decode(frames)


def test_a_record_arrives_as_one_monitoring_message_whose_payload_unpickles_to_it(backend, senders):
    sender = DragonRadio().create_sender()
    senders.append(sender)
    assert isinstance(sender, MonitoringRadioSender)
    sender.send(RECORD)
    _, message = receive(backend)
    assert isinstance(message, p.Monitoring)
    assert [pickle.loads(payload) for payload in message.payloads] == [RECORD]


def test_records_of_one_process_share_one_link_in_order(backend, senders):
    sender = DragonRadio().create_sender()
    senders.append(sender)
    for try_id in range(3):
        sender.send((MessageType.RESOURCE_INFO, {"try_id": try_id}))
    received = [receive(backend) for _ in range(3)]
    assert len({identity for identity, _ in received}) == 1
    assert [pickle.loads(m.payloads[0])[1]["try_id"] for _, m in received] == [0, 1, 2]


def test_a_new_pid_gets_a_new_socket(backend, senders, monkeypatch):
    sender = DragonRadio().create_sender()
    senders.append(sender)
    sender.send(("parent", 1))
    parent_identity, _ = receive(backend)
    parent_socket = sender._socket
    pid = os.getpid()
    monkeypatch.setattr(monitoring.os, "getpid", lambda: pid + 1)  # as seen by a forked child
    try:
        sender.send(("child", 2))
        child_identity, message = receive(backend)
        assert sender._socket is not parent_socket
        assert child_identity != parent_identity
        assert pickle.loads(message.payloads[0]) == ("child", 2)
    finally:
        parent_socket.context.destroy(linger=0)


def test_a_forked_child_sends_on_its_own_link(backend, senders):
    sender = DragonRadio().create_sender()
    sender.send(("parent", 1))
    parent_identity, _ = receive(backend)
    child = os.fork()
    if child != 0:
        senders.append(sender)
    else:  # the child: what Parsl's forked resource monitor does, then exit at once
        code = 1
        try:
            sender.send(("child", os.getpid()))
            del sender  # the last reference: flushes (LINGER) as the monitor's sender going out of scope
            gc.collect()
            code = 0
        finally:
            os._exit(code)
    try:
        child_identity, message = receive(backend)
        assert pickle.loads(message.payloads[0]) == ("child", child)
        assert child_identity != parent_identity
    finally:
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_record_sent_just_before_the_sender_is_dropped_still_arrives(backend):
    sender = DragonRadio().create_sender()  # as Parsl's send_first_last_message does: send, return
    sender.send(RECORD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # dropping is how Parsl ends a sender
        del sender
        gc.collect()
    _, message = receive(backend)
    assert pickle.loads(message.payloads[0]) == RECORD


def test_outside_a_worker_a_record_is_dropped_with_an_error_and_nothing_left_open(monkeypatch, caplog):
    for name in WORKER_LINK_VARS:
        monkeypatch.delenv(name, raising=False)
    sender = DragonRadio().create_sender()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sender.send(RECORD)
        gc.collect()
    assert "Not inside a parsl-dragon worker: monitoring record dropped" in caplog.text
    assert sender._socket is None
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_the_receiver_does_nothing_and_the_config_still_travels_to_workers(backend, senders, tmp_path):
    radio = DragonRadio()
    resource_msgs = multiprocessing.Queue()
    try:
        receiver = radio.create_receiver(run_dir=str(tmp_path), resource_msgs=resource_msgs)
        assert isinstance(receiver, MonitoringRadioReceiver)
        receiver.shutdown()
        receiver.shutdown()
        assert resource_msgs.empty()  # records reach the queue through the executor, not the receiver
        assert os.listdir(tmp_path) == []
    finally:
        resource_msgs.close()
        resource_msgs.join_thread()
    shipped = pickle.loads(pickle.dumps(radio))  # Parsl pickles the RadioConfig to the workers
    assert isinstance(shipped, RadioConfig) and repr(shipped) == "DragonRadio()"
    sender = shipped.create_sender()
    senders.append(sender)
    sender.send(RECORD)
    _, message = receive(backend)
    assert pickle.loads(message.payloads[0]) == RECORD
