"""The client's handling of what a server says about the session (client.py), without sockets."""
from parsl_dragon.driver.client import DragonClient, ServerLink
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.security import ephemeral_pair


def client():
    return DragonClient(ephemeral_pair(), timeout_s=1.0, heartbeat_period=1.0, heartbeat_threshold=3,
                        on_results=lambda *a: None, on_monitoring=lambda *a: None, on_server_lost=lambda *a: None)


def link():
    welcome = p.Welcome(server_id="s1", host="n1", parsl_version="x", python_version="3.11", nodes=["n1"], workers=1)
    return ServerLink(info=None, welcome=welcome, owner=False, socket=None, monitor=None)


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
    kind, (server_id, ids, error_type, error) = c._inbox.get_nowait()
    assert (kind, server_id, ids, error_type) == ("failed", "s1", [4, 9], "TaskLost") and "lost in flight" in error
    c._on_message(server, p.SyncReply(unknown=[]))
    assert c._inbox.empty()
