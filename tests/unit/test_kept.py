"""Kept results without a runtime: references, the driver's bookkeeping, the server's store.

The DDict itself is Dragon's (tests/integration/test_kept.py runs it); here a dict stands in
for the shelf, named as such, to test what surrounds it.
"""
import gc
import time

import pytest

from parsl_dragon.core.spec import TaskSpec, normalize_spec
from parsl_dragon.driver.kept import KeptResults
from parsl_dragon.driver.routing import TaskRouter
from parsl_dragon.errors import ResultLost
from parsl_dragon.server.store import ResultStore
from parsl_dragon.task import kept as k
from parsl_dragon.wire import dataplane as d
from parsl_dragon.wire import protocol as p


class DictShelf:
    """A stand-in for server/shelf.Shelf: a dict, one 'manager'."""

    def __init__(self):
        self.data = {}
        self.closed = False
        self.descriptor = "dict-shelf"

    pools = []

    def put(self, key, parts):
        self.data[key] = b"".join(parts)
        return 0

    def get(self, key, manager):
        return self.data[key]

    def delete(self, key, manager):
        return self.data.pop(key, None) is not None

    def close(self):
        self.closed = True


def _kept_result(task_id=7, key="t1", server="s1", nbytes=10, kind="builtins:bytes"):
    return p.TaskResult(task_id=task_id, status=p.KEPT, kept=d.KeptEntry(key, 0, nbytes, kind).to_wire())


def test_keep_result_is_a_boolean_resource_key():
    assert normalize_spec({"keep_result": True}).keep_result is True
    assert normalize_spec({}).keep_result is None and "keep_result" not in TaskSpec().to_wire()
    assert TaskSpec.from_wire({"keep_result": False}).keep_result is False
    with pytest.raises(Exception, match="keep_result"):
        normalize_spec({"keep_result": "yes"})


def test_a_reference_reports_the_value_class_only_if_its_module_is_imported_here():
    assert k.value_class("builtins:dict") is dict
    assert k.value_class("no_such_module_here:Thing") is k.KeptValue
    assert k.value_class("builtins:len") is k.KeptValue, "not a class"


def test_references_among_arguments_are_read_and_other_values_left_alone():
    from parsl.serialize import serialize
    data = serialize({"ref": "t9"})
    k.register_reader("s-args", lambda ref: data)
    try:
        ref = k.reference(k.KeptResult("s-args", "t9", 0, len(data), 3, "builtins:dict"))
        assert k.is_kept(ref) and not k.is_kept({"a": 1})
        assert isinstance(ref, dict), "isinstance answers from the default class"
        args, kwargs = k.real_arguments((ref, 1), {"x": ref, "inputs": [ref, "v"]})
        assert args == ({"ref": "t9"}, 1) and type(args[0]) is dict
        assert kwargs == {"x": {"ref": "t9"}, "inputs": [{"ref": "t9"}, "v"]}
    finally:
        k.forget_reader("s-args", "test over")


def test_a_value_of_another_size_than_was_kept_is_refused_unread():
    k.register_reader("s-short", lambda ref: b"")
    try:
        with pytest.raises(ResultLost, match="returned 0 bytes where 100 were kept"):
            k.KeptResult("s-short", "t1", 0, 100, 5).read()
    finally:
        k.forget_reader("s-short", "test over")


def test_the_store_puts_only_what_its_free_blocks_can_take():
    from parsl_dragon.server.shelf import block_size, buddy_fits
    assert block_size(3 << 20) == 4 << 20 and block_size(4 << 20) == 8 << 20 and block_size(1) == 4096
    assert buddy_fits([4 << 20, 4096], {16 << 20: 1}), "one block split for both"
    assert not buddy_fits([8 << 20, 8 << 20], {8 << 20: 1, 4 << 20: 2}), "the free total is not the point"
    assert buddy_fits([8 << 20, 4 << 20, 4 << 20], {8 << 20: 1, 4 << 20: 2})
    assert buddy_fits([4096] * 4, {16384: 1}) and not buddy_fits([4096] * 5, {16384: 1})
    assert buddy_fits([], {}) and not buddy_fits([4096], {})


class StandInPool:
    """A stand-in for a DDict manager's memory pool as a worker attaches it (Dragon's MemoryPool)."""

    def __init__(self, size, free_blocks):
        self.size, self.free_blocks = size, free_blocks
        self.free_space = sum(size * count for size, count in free_blocks.items())
        self.detached = False

    def detach(self):
        self.detached = True


class StandInManagerHandle(dict):
    """A stand-in for one manager's DDict handle: stores what is put, answers ``dstats``."""

    def __init__(self, stats):
        super().__init__()
        self.dstats = {0: stats}

    def detach(self):
        pass


def _stand_in_shelf(monkeypatch, pools, pool, stats=None):
    from types import SimpleNamespace

    from parsl_dragon.server import shelf
    handle = StandInManagerHandle(stats)
    ddict = SimpleNamespace(serialize=lambda: "d", local_manager=0, detach=lambda: None,
                            manager=lambda manager: SimpleNamespace(pickler=lambda value_pickler: handle))
    attached = []
    attach = lambda descriptor: attached.append(descriptor) or pool  # noqa: E731
    monkeypatch.setattr(shelf, "MemoryPool", SimpleNamespace(attach=attach))
    return shelf.Shelf(ddict, creator=False, pools=pools), handle, attached


def test_a_put_reads_free_memory_from_the_pool_and_writes_the_parts(monkeypatch):
    import base64

    from parsl_dragon.server.shelf import ShelfFull
    pool = StandInPool(16 << 20, {8 << 20: 1, 4 << 20: 1})
    store, handle, attached = _stand_in_shelf(monkeypatch, [base64.b64encode(b"pool-0").decode()], pool)
    parts = [b"head", memoryview(b"x" * (1 << 20))]
    assert store.put("t1", parts) == 0 and handle["t1"] is parts
    assert attached == [b"pool-0"], "attached once, by the descriptor the server sent"
    with pytest.raises(ShelfFull, match="largest free block: 8388608"):
        store.put("t2", [b"head", b"x" * (8 << 20)])  # an 8 MiB part takes a 16 MiB block
    with pytest.raises(ShelfFull, match="2 part"):
        store.put("t3", [b"x" * (5 << 20)] * 2)  # two 8 MiB blocks: more than is free below the full mark
    assert "t2" not in handle
    store.close()
    assert pool.detached


def test_a_put_asks_the_manager_when_the_pool_is_unknown(monkeypatch):
    from types import SimpleNamespace

    from parsl_dragon.server.shelf import ShelfFull
    stats = SimpleNamespace(total_bytes=16 << 20, total_used_bytes=14 << 20, free_blocks={2 << 20: 1})
    store, handle, attached = _stand_in_shelf(monkeypatch, [], None, stats)
    with pytest.raises(ShelfFull, match="below the full mark: 0"):
        store.put("t1", [b"x" * 100])
    stats.total_used_bytes = 4 << 20
    assert store.put("t1", [b"x" * 100]) == 0 and attached == []


def test_raw_parts_are_written_one_message_each_and_read_back_whole():
    from parsl_dragon.server.shelf import RawParts

    class Messages:
        """A stand-in for the DDict's stream adapters: one ``write`` is one message; ``read``
        returns the next message, and raises EOFError after the last (as Dragon's does)."""

        def __init__(self):
            self.messages = []

        def write(self, data):
            self.messages.append(bytes(data))

        def read(self):
            if not self.messages:
                raise EOFError
            return self.messages.pop(0)

    stream = Messages()
    RawParts.dump([b"ab", memoryview(b"cd"), bytearray(b"e")], stream)
    assert stream.messages == [b"ab", b"cd", b"e"]
    whole = RawParts.load(stream)
    assert whole == b"abcde" and isinstance(whole, bytearray), "several parts: one writable copy"
    RawParts.dump([b"only"], stream)
    assert RawParts.load(stream) == b"only"


def test_node_lock_is_exclusive_and_released_on_close():
    import threading

    from parsl_dragon.server.shelf import NodeLock
    order = []
    with NodeLock("parsl-dragon-test-lock"):
        other = threading.Thread(target=lambda: NodeLock("parsl-dragon-test-lock").__enter__() and order.append("b"))
        other.start()
        time.sleep(0.1)
        order.append("a")
    other.join(5)
    assert order == ["a", "b"]


def test_attach_tries_again_only_after_dragons_lock_initialization_race(monkeypatch):
    """The race itself cannot be produced on demand: a stand-in for DDict.attach fails as a worker's
    attach was seen to fail (Dragon's ChannelError wrapped in a RuntimeError), then succeeds."""
    from parsl_dragon.server import shelf

    class Race(Exception):
        pass

    calls = []

    class StandInDDict:
        @staticmethod
        def attach(descriptor, timeout):
            calls.append(descriptor)
            if len(calls) == 1:
                try:
                    raise Race("Could not create process local channel | Return Code: DRAGON_LOCK_ALREADY_INITD")
                except Race:
                    raise RuntimeError("There is an exception __setstate__ of ddict.")
            if descriptor == "broken":
                raise RuntimeError("some other failure")
            return SimpleNamespace(serialize=lambda: descriptor)

    from types import SimpleNamespace
    monkeypatch.setattr(shelf, "DDict", StandInDDict)
    assert shelf.Shelf.attach("d1").descriptor == "d1" and calls == ["d1", "d1"]
    calls.clear()
    calls.append("first call already made")  # the next failure is not the race: no second try
    with pytest.raises(RuntimeError, match="some other failure"):
        shelf.Shelf.attach("broken")
    assert calls == ["first call already made", "broken"]


class InstantPollQueue:
    """A stand-in for the exception queue of Dragon 0.15's ProcessGroup: its ``poll`` returns at
    once whatever its timeout (as the real one was measured to), and counts its calls."""

    def __init__(self):
        self.items, self.polls = [], 0

    def poll(self, timeout):
        self.polls += 1
        return bool(self.items)

    def get(self):
        return self.items.pop(0)

    def put(self, item):
        self.items.append(item)


def _group(patience):
    import threading
    from types import SimpleNamespace
    return SimpleNamespace(_EXCEPTION_Q_PATIENCE=patience, _exq=InstantPollQueue(), _exq_shutdown=threading.Event(),
                           _exq_lock=threading.Lock(), _ex_raised=False)


def test_the_ddict_orchestrators_exception_monitor_waits_between_polls_and_still_sees_a_failure():
    """The real monitor spun a core (it loops on the instant poll); ours polls once per patience,
    still records a manager's exception (and leaves it in the queue, as Dragon's does), and a
    shutdown ends it at once."""
    import threading

    from parsl_dragon.server import shelf
    group = _group(patience=0.05)
    monitor = threading.Thread(target=shelf._patient_exq_monitor, args=(group,))
    monitor.start()
    time.sleep(0.5)
    assert 1 <= group._exq.polls <= 12, f"{group._exq.polls} polls in 0.5 s at a patience of 0.05 s"
    failure = ValueError("a manager failed")
    group._exq.put(failure)
    monitor.join(2)
    assert not monitor.is_alive() and group._ex_raised and group._exq.items == [failure]

    idle = _group(patience=30.0)
    monitor = threading.Thread(target=shelf._patient_exq_monitor, args=(idle,))
    monitor.start()
    time.sleep(0.1)
    started = time.monotonic()
    idle._exq_shutdown.set()
    monitor.join(5)
    assert not monitor.is_alive() and time.monotonic() - started < 2 and not idle._ex_raised


def test_a_ddict_made_here_starts_its_orchestrator_through_ours_and_dragons_own_is_put_back():
    from dragon.data.ddict import orchestrator

    from parsl_dragon.server import shelf
    dragons = orchestrator.start
    with pytest.raises(RuntimeError, match="no runtime"):
        with shelf._patient_orchestrator():
            assert orchestrator.start is shelf.orchestrator_main
            raise RuntimeError("no runtime")
    assert orchestrator.start is dragons is shelf._DRAGON_ORCHESTRATOR_START


def test_a_reference_whose_server_is_gone_raises_result_lost_naming_the_task():
    k.forget_reader("s-gone", "its block's server s-gone was lost: lease expired")
    ref = k.KeptResult("s-gone", "t1", 0, 100, 42)
    with pytest.raises(ResultLost, match="task 42.*lease expired"):
        ref.read()


def test_the_driver_counts_live_references_and_evicts_what_is_garbage():
    sent = []
    kept = KeptResults(lambda server_id, message: sent.append((server_id, message)))
    kept.attach("s1")
    try:
        ref = kept.reference("s1", _kept_result(key="t1"))
        other = kept.reference("s1", _kept_result(key="t2"))
        assert kept.live("s1") == 2
        del ref
        gc.collect()
        kept.flush()
        assert kept.live("s1") == 1
        assert [(s, m.keys) for s, m in sent if isinstance(m, d.EvictResults)] == [("s1", [["t1", 0]])]
        assert k.is_kept(other)
    finally:
        kept.close()


def test_a_read_waits_for_the_servers_reply_and_a_lost_server_fails_it():
    sent = []
    kept = KeptResults(lambda server_id, message: sent.append(message))
    kept.attach("s1")
    ref = k.KeptResult("s1", "t1", 0, 3, 7)

    import threading
    got = {}
    reader = threading.Thread(target=lambda: got.setdefault("value", ref.read()))
    reader.start()
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    kept.on_fetched("s1", d.FetchedResult(request=sent[0].request, payloads=[b"abc"]))
    reader.join(5)
    assert got == {"value": b"abc"}

    def read_after_loss():
        try:
            ref.read()
        except ResultLost as exc:
            got["error"] = str(exc)
    reader = threading.Thread(target=read_after_loss)
    reader.start()
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    kept.lost("s1", "its block's server s1 was lost: job ended")
    reader.join(5)
    assert "task 7" in got["error"] and "job ended" in got["error"]
    kept.close()


def test_a_task_goes_to_the_block_holding_most_of_its_kept_bytes_and_others_are_read_here(monkeypatch):
    kept = KeptResults(lambda *a: None)
    kept.attach("s-big")
    kept.attach("s-small")
    big = k.reference(k.KeptResult("s-big", "t1", 0, 1000, 1))
    small = k.reference(k.KeptResult("s-small", "t2", 0, 10, 2))
    assert kept.home((small,), {"inputs": [big]}) == "s-big"
    assert kept.home((1, "x"), {}) is None
    monkeypatch.setattr(k.KeptResult, "__call__", lambda self: f"value of {self.key}")
    args, kwargs = kept.localize((small, big), {"inputs": [small]}, "s-big")
    assert args[0] == "value of t2" and k.is_kept(args[1]) and kwargs["inputs"] == ["value of t2"]
    kept.lost("s-big", "gone")
    assert kept.home((small, big), {}) == "s-small", "a server that is gone is nobody's home"
    kept.close()


class _Link:
    def __init__(self, server_id, workers=1):
        self.server_id = server_id
        self.stopping = ""
        self.welcome = p.Welcome(server_id=server_id, host="h", parsl_version="x", python_version="3",
                                 nodes=["n1"], workers=workers, cores=[4], gpus=[0])


def test_the_router_sends_a_task_to_its_home_server_while_it_is_connected():
    router = TaskRouter(prefetch=0)
    router.add(_Link("a"), "0")
    router.add(_Link("b"), "1")
    sends = router.submit(1, TaskSpec(), b"", home="b")
    assert [s.server_id for s in sends] == ["b"]
    sends = router.submit(2, TaskSpec(), b"", home="b")  # b is full (1 worker, no prefetch): wait for b
    assert sends == [] and [e[0] for e in router.pending] == [2]
    assert [s.server_id for s in router.finished("b", [1])] == ["b"]
    assert [s.server_id for s in router.submit(3, TaskSpec(), b"", home="gone")] == ["a"], "home gone: anywhere"


def test_the_store_holds_tasks_until_the_shelf_is_up_then_announces_it_and_serves_reads():
    shelf = DictShelf()
    store = ResultStore("srv", 1 << 20, None, make_shelf=lambda nodes, size, where: shelf)
    store.open(1)
    assert store.state == "off" and not store.wants(TaskSpec())
    assert store.wants(TaskSpec(keep_result=True))
    assert store.hold(("client", "task", b"payload")), "the first task that asks starts the shelf"
    announced, resubmitted, replies = [], [], []
    deadline = time.monotonic() + 5
    while not resubmitted and time.monotonic() < deadline:
        store.poll(announced.append, resubmitted.append, lambda ident, m: replies.append((ident, m)))
        time.sleep(0.01)
    assert resubmitted == [("client", "task", b"payload")] and store.ready
    assert announced == [d.StoreReady(descriptor="dict-shelf", server_id="srv", keep_over=-1)]
    assert not store.hold(("later",)), "once up, nothing waits"
    shelf.data["t1"] = b"bytes"
    store.fetch(b"c1", d.FetchResult(request=1, key="t1", manager=0))
    store.fetch(b"c1", d.FetchResult(request=2, key="nope", manager=0))
    store.evict([["t1", 0]])
    while len(replies) < 2 and time.monotonic() < deadline:
        store.poll(announced.append, resubmitted.append, lambda ident, m: replies.append((ident, m)))
        time.sleep(0.01)
    assert replies[0] == (b"c1", d.FetchedResult(request=1, payloads=[b"bytes"]))
    assert replies[1][1].error and not replies[1][1].payloads
    store.close()
    assert shelf.closed and "t1" not in shelf.data


def test_a_shelf_that_cannot_be_created_lets_held_tasks_go_on():
    def broken(nodes, size, where):
        raise OSError("no space left on /dev/shm")
    store = ResultStore("srv", 1 << 20, 4096, make_shelf=broken)
    store.open(2)  # keep_results_over: starts at once
    deadline = time.monotonic() + 5
    held = None
    while held is None and time.monotonic() < deadline:
        held = store.started()
        time.sleep(0.01)
    assert held == [] and store.state == "failed" and "no space left" in store.why_failed
    assert store.ready_message() is None and not store.hold(("task",))
    store.close()
