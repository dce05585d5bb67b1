"""The client without sockets (client.py, links.py, work_items.py): what a server says about the
session, and the typed work items the client's threads hand each other."""
import logging
from types import SimpleNamespace

import pytest
import zmq

from parsl_dragon.driver.client import DragonClient
from parsl_dragon.driver.links import ServerLink
from parsl_dragon.driver.work_items import (
    AddLink,
    ClientClosing,
    LinkReconnected,
    MonitoringArrived,
    OutgoingTask,
    RemoveLink,
    ResultsArrived,
    SendMessage,
    ServerGone,
    TasksFailed,
    handler_for,
)
from parsl_dragon.errors import SERVER_LOST, TASK_LOST
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.security import ephemeral_pair


class Calls:
    """The client's callbacks, recorded."""

    def __init__(self):
        self.calls = []

    def results(self, server_id, message):
        self.calls.append(("results", server_id, message))

    def monitoring(self, message):
        self.calls.append(("monitoring", message))

    def lost(self, server_id, why):
        self.calls.append(("lost", server_id, why))

    def reconnected(self, server_id):
        self.calls.append(("reconnected", server_id))


def client(calls=None):
    calls = calls or Calls()
    return DragonClient(ephemeral_pair(), timeout_s=1.0, heartbeat_period=1.0, heartbeat_threshold=3,
                        on_results=calls.results, on_monitoring=calls.monitoring, on_server_lost=calls.lost,
                        on_reconnected=calls.reconnected)


class Socket:
    """Records what the I/O thread sends on a link."""

    def __init__(self):
        self.sent = []

    def send_multipart(self, frames, copy=True):
        self.sent.append(p.decode(frames))


class Poller:
    def __init__(self):
        self.registered = []

    def register(self, sock, flags):
        self.registered.append(sock)

    def unregister(self, sock):
        self.registered.remove(sock)


def link(server_id="s1", socket=None):
    welcome = p.Welcome(server_id=server_id, host="n1", parsl_version="x", python_version="3.11", nodes=["n1"],
                        workers=1)
    return ServerLink(info=None, welcome=welcome, owner=False, socket=socket, monitor=None)


# ---- what a server says about the session --------------------------------------
def test_a_server_without_our_session_is_lost_at_the_next_tick_not_kept_alive():
    c, server = client(), link()
    c._on_message(server, p.ErrorReply(reason="no session for this link", code=p.NO_SESSION))
    assert "no session for this client" in server.stopping


def test_a_rejected_message_leaves_the_session_alone():
    c, server = client(), link()
    c._on_message(server, p.ErrorReply(reason="malformed"))
    assert server.stopping == ""


def test_a_stopping_server_is_recognised_by_its_code():
    c, server = client(), link()
    c._on_message(server, p.ErrorReply(reason="server stopping: shutdown requested", code=p.STOPPING))
    assert server.stopping.startswith("server stopping")


def test_tasks_the_server_does_not_hold_after_a_reconnect_come_back_as_task_lost():
    c, server = client(), link()
    c._on_message(server, p.SyncReply(unknown=[4, 9]))
    item = c._inbox.get_nowait()
    assert isinstance(item, TasksFailed)
    assert (item.server_id, item.task_ids, item.error_type) == ("s1", [4, 9], TASK_LOST)
    assert "lost in flight" in item.error
    c._on_message(server, p.SyncReply(unknown=[]))
    assert c._inbox.empty()


def test_results_and_monitoring_go_to_the_inbox_as_typed_items():
    c, server = client(), link()
    results = p.TaskResults(results=[p.TaskResult(task_id=1, status=p.OK)], payloads=[b"x"])
    c._on_message(server, results)
    c._on_message(server, p.Monitoring(payloads=[b"m"]))
    assert c._inbox.get_nowait() == ResultsArrived("s1", results)
    assert c._inbox.get_nowait() == MonitoringArrived(p.Monitoring(payloads=[b"m"]))


def test_a_dropped_link_that_comes_back_asks_for_a_sync_once():
    server = link()
    server.info = SimpleNamespace(address="tcp://127.0.0.1:1")
    assert not server.on_connection_event(zmq.EVENT_HANDSHAKE_SUCCEEDED), "the first handshake is no reconnect"
    assert not server.on_connection_event(zmq.EVENT_DISCONNECTED)
    assert server.down_since is not None
    assert not server.on_connection_event(zmq.EVENT_DISCONNECTED)
    assert server.on_connection_event(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    assert server.down_since is None and not server.on_connection_event(zmq.EVENT_HANDSHAKE_SUCCEEDED)


# ---- work items into the I/O thread ---------------------------------------------
def test_requests_queue_typed_items_in_order():
    c = client()
    entry = p.TaskEntry(task_id=1)
    c.send_task("s1", entry, b"payload")
    c.send("s1", p.Sync(task_ids=[1]))
    c.disconnect("s1", p.Goodbye())
    assert list(c._outbox) == [OutgoingTask("s1", entry, b"payload"), SendMessage("s1", p.Sync(task_ids=[1])),
                               RemoveLink("s1", p.Goodbye())]


def test_a_command_goes_out_after_the_tasks_queued_before_it_and_tasks_are_batched():
    c, sock, poller = client(), Socket(), Poller()
    c._on_add_link(AddLink(link("s1", sock)), poller)
    c.send_task("s1", p.TaskEntry(task_id=1), b"a")
    c.send_task("s1", p.TaskEntry(task_id=2), b"b")
    c.send("s1", p.Sync(task_ids=[1, 2]))
    c.send_task("s1", p.TaskEntry(task_id=3), b"c")
    c._drain_outbox(poller)
    assert [type(m) for m in sock.sent] == [p.SubmitTasks, p.Sync, p.SubmitTasks]
    assert [t.task_id for t in sock.sent[0].tasks] == [1, 2] and sock.sent[0].payloads == [b"a", b"b"]
    assert [t.task_id for t in sock.sent[2].tasks] == [3] and not c._outbox


def test_tasks_for_a_server_that_is_gone_come_back_failed_as_server_lost():
    c, poller = client(), Poller()
    c.send_task("gone", p.TaskEntry(task_id=7), b"a")
    c._drain_outbox(poller)
    item = c._inbox.get_nowait()
    assert item == TasksFailed("gone", [7], SERVER_LOST, "server gone is gone")


def test_remove_link_says_goodbye_and_closes_the_link():
    closed = []

    class Closing(Socket):
        def disable_monitor(self):
            pass

        def close(self, linger=None):
            closed.append((self, linger))

    c, sock, monitor, poller = client(), Closing(), Closing(), Poller()
    server = link("s1", sock)
    server.monitor = monitor
    c._on_add_link(AddLink(server), poller)
    assert poller.registered == [sock, monitor] and c.links == {"s1": server}
    c.disconnect("s1", p.Goodbye())
    c._drain_outbox(poller)
    assert sock.sent == [p.Goodbye()] and c.links == {} and poller.registered == []
    assert (sock, 1000) in closed and (monitor, 0) in closed


def test_an_unknown_command_is_refused_in_the_senders_thread_by_name():
    c = client()
    with pytest.raises(TypeError, match="I/O thread has no handler for str: 'add'"):
        c._command("add")
    with pytest.raises(TypeError, match="no handler for ResultsArrived"):
        c._command(ResultsArrived("s1", p.TaskResults(results=[])))
    assert not c._outbox, "nothing was queued"


# ---- work items out of the I/O thread, to the result thread ---------------------
def test_the_result_thread_hands_each_item_to_its_callback_and_stops_at_closing():
    calls = Calls()
    c = client(calls)
    results = p.TaskResults(results=[p.TaskResult(task_id=1, status=p.OK)], payloads=[b"x"])
    for item in (ResultsArrived("s1", results), MonitoringArrived(p.Monitoring(payloads=[b"m"])),
                 ServerGone("s2", "lease expired"), LinkReconnected("s3"),
                 TasksFailed("s4", [5, 6], TASK_LOST, "lost in flight"), ClientClosing(),
                 ServerGone("never", "after the end")):
        c._inbox.put(item)
    c._result_loop()
    assert calls.calls[:4] == [("results", "s1", results), ("monitoring", p.Monitoring(payloads=[b"m"])),
                               ("lost", "s2", "lease expired"), ("reconnected", "s3")]
    kind, server_id, failed = calls.calls[4]
    assert (kind, server_id, len(calls.calls)) == ("results", "s4", 5)
    assert [(r.task_id, r.status, r.error_type, r.error) for r in failed.results] == [
        (5, p.FAILED, TASK_LOST, "lost in flight"), (6, p.FAILED, TASK_LOST, "lost in flight")]
    assert failed.payloads == [b"", b""]


def test_an_unknown_inbox_item_is_logged_by_name_and_the_result_thread_goes_on(caplog):
    calls = Calls()
    c = client(calls)
    for item in (("results", ("s1", None)), LinkReconnected("s1"), ClientClosing()):
        c._inbox.put(item)
    with caplog.at_level(logging.ERROR, logger="parsl_dragon.driver.client"):
        c._result_loop()
    assert calls.calls == [("reconnected", "s1")]
    [record] = caplog.records
    assert "result thread has no handler for tuple" in record.exc_text and "'results'" in record.exc_text


def test_a_failing_callback_does_not_stop_the_result_thread(caplog):
    calls = Calls()
    c = client(calls)

    def fail(server_id, why):
        raise SystemExit("from a task")

    c.server_lost_callback = fail
    for item in (ServerGone("s1", "x"), LinkReconnected("s1"), ClientClosing()):
        c._inbox.put(item)
    with caplog.at_level(logging.ERROR, logger="parsl_dragon.driver.client"):
        c._result_loop()
    assert calls.calls == [("reconnected", "s1")]
    assert "Result callback failed for ServerGone" in caplog.text


def test_handler_for_names_the_item_and_the_thread():
    handlers = {LinkReconnected: print}
    assert handler_for(handlers, LinkReconnected("s1"), "result") is print
    with pytest.raises(TypeError, match=r"the result thread has no handler for ServerGone: ServerGone\("):
        handler_for(handlers, ServerGone("s1", "why"), "result")


def test_work_items_are_frozen():
    item = ServerGone("s1", "why")
    with pytest.raises(AttributeError):
        item.why = "other"
