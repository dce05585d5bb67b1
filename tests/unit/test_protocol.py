"""Unit tests for parsl_dragon.wire.protocol: wire format, decoding rules, version checks."""
from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import sys
from dataclasses import fields

import pytest
from parsl.executors.errors import ExecutorError, InvalidResourceSpecification

from parsl_dragon.core.placement import Placement
from parsl_dragon.core.spec import TaskSpec, normalize_spec
from parsl_dragon.errors import ProtocolError
from parsl_dragon.wire import dataplane as d
from parsl_dragon.wire import frames
from parsl_dragon.wire import protocol as p


def _header(body, version=p.PROTOCOL_VERSION) -> bytes:
    return bytes([version]) + json.dumps(body).encode()


def _required(cls):
    return [f.name for f in fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def _samples():
    """One representative, fully populated instance of every message type."""
    return {
        "Hello": p.Hello(client_id="c-1", protocol=p.PROTOCOL_VERSION, parsl_version="2024.1.1",
                         python_version="3.11", owner=True),
        "Welcome": p.Welcome(server_id="abc123", host="nid0001", parsl_version="2024.1.1",
                             python_version="3.11", nodes=["nid0001", "nid0002"], workers=256),
        "Refused": p.Refused(reason="Parsl 1 (client) != 2 (server)"),
        "SubmitTasks": p.SubmitTasks(
            tasks=[p.TaskEntry(task_id=7, spec=normalize_spec({"num_nodes": 1, "ranks_per_node": 4}),
                               placement=Placement(7, ("nid0001",), ((0, 1, 2, 3),), ((),))),
                   p.TaskEntry(task_id=8)],
            payloads=[pickle.dumps(("f", (1,), {})), b"\x00\x01binary\xff"]),
        "TaskResults": p.TaskResults(
            results=[p.TaskResult(task_id=7, status=p.OK, host="nid0001", unkept="store full"),
                     p.TaskResult(task_id=8, status=p.EXCEPTION, host="nid0002"),
                     p.TaskResult(task_id=9, status=p.FAILED, host="nid0002",
                                  error_type="WorkerLost", error="worker died")],
            payloads=[pickle.dumps(42), pickle.dumps(ValueError("x")), b""]),
        "Monitoring": p.Monitoring(payloads=[b"rec-1", b"rec-2", b"rec-3"]),
        "Incoming": p.Incoming(nbytes=3 << 30),
        "Heartbeat": p.Heartbeat(sent=1732435200.25, workers=4, running=3, queued=11),
        "Goodbye": p.Goodbye(),
        "Shutdown": p.Shutdown(reason="owner exiting"),
        "ErrorReply": p.ErrorReply(reason="SubmitTasks has 2 entries but 1 payloads"),
        "Sync": p.Sync(task_ids=[3, 5, 8]),
        "SyncReply": p.SyncReply(unknown=[5]),
        "WorkerResync": p.WorkerResync(worker_id="n1:42"),
        "ResyncMark": p.ResyncMark(assigned=[1, 2]),
        "WorkerReady": p.WorkerReady(worker_id="w-3", host="nid0002", pid=4242, puid=17),
        "StopWorker": p.StopWorker(),
        "LaunchRanks": p.LaunchRanks(task_id=12, argv=["./sim", "--step", "1"], cwd="/scratch/run",
                                     env={"OMP_NUM_THREADS": "4"}),
        "RanksDone": p.RanksDone(task_id=12, exit_codes=[0, 3], labels=["rank 0", "rank 1"],
                                 output_dir="/scratch/run/ranks-12", error=""),
        "StoreReady": d.StoreReady(descriptor="b64-descriptor==", server_id="abc123", keep_over=1 << 20),
        "FetchResult": d.FetchResult(request=3, key="t10", manager=1),
        "FetchedResult": d.FetchedResult(request=3, payloads=[b"\x80\x05value"]),
        "EvictResults": d.EvictResults(keys=[["t10", 1], ["t11", 0]]),
    }


SAMPLES = _samples()


# ---------------------------------------------------------------- round trips

def test_every_registered_message_type_has_a_sample():
    # a new message type must be added to the round-trip tests
    assert set(SAMPLES) == set(p.Message.registry)
    for name, cls in p.Message.registry.items():
        assert cls.__name__ == name
        assert issubclass(cls, p.Message)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_every_message_type(name):
    message = SAMPLES[name]
    frames = p.encode(message)
    assert all(isinstance(f, bytes) for f in frames)
    assert frames[0][0] == p.PROTOCOL_VERSION
    body = json.loads(frames[0][1:])
    assert body["type"] == name
    assert "payloads" not in body  # payloads never go into the JSON header

    decoded = p.decode(frames)
    assert type(decoded) is type(message)
    assert decoded == message
    for f in fields(message):
        assert getattr(decoded, f.name) == getattr(message, f.name), f.name


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_with_defaults_only(name):
    cls = p.Message.registry[name]
    full = SAMPLES[name]
    minimal = cls(**{k: getattr(full, k) for k in _required(cls)})
    entries = getattr(minimal, "tasks", getattr(minimal, "results", None))
    if entries is not None:
        minimal.payloads = [b"p%d" % i for i in range(len(entries))]
    assert p.decode(p.encode(minimal)) == minimal


def test_payload_frames_are_preserved_verbatim_and_in_order():
    payloads = [bytes(range(256)), b"", b"\x80\x04K*.", b"x" * 100_000]
    message = p.SubmitTasks(tasks=[p.TaskEntry(task_id=i) for i in range(4)], payloads=payloads)
    frames = p.encode(message)
    assert frames[1:] == payloads
    decoded = p.decode(frames)
    assert decoded.payloads == payloads
    assert [t.task_id for t in decoded.tasks] == [0, 1, 2, 3]
    # payloads are opaque bytes: the decoder does not unpickle them
    assert pickle.loads(decoded.payloads[2]) == 42


def test_payloads_field_hidden_from_repr():
    message = p.SubmitTasks(tasks=[p.TaskEntry(task_id=1)], payloads=[b"SECRET-PICKLE"])
    assert "SECRET-PICKLE" not in repr(message)
    assert "task_id=1" in repr(message)


def test_nested_task_entries_are_rebuilt_as_dataclasses():
    message = SAMPLES["SubmitTasks"]
    decoded = p.decode(p.encode(message))
    assert all(isinstance(t, p.TaskEntry) for t in decoded.tasks)
    assert decoded.tasks[0].spec == TaskSpec(num_nodes=1, ranks_per_node=4, num_ranks=4, pmi="mpiexec")
    assert decoded.tasks[0].placement == Placement(7, ("nid0001",), ((0, 1, 2, 3),), ((),))
    assert decoded.tasks[1].spec == TaskSpec()  # default factory
    assert decoded.tasks[1].placement is None and decoded.tasks[1].task_id == 8
    assert all(t.spec_error is None for t in decoded.tasks)


def test_task_entry_wire_form():
    body = json.loads(p.encode(SAMPLES["SubmitTasks"])[0][1:])
    assert body["tasks"] == [
        {"task_id": 7, "spec": {"num_nodes": 1, "ranks_per_node": 4, "num_ranks": 4, "pmi": "mpiexec"},
         "placement": {"hosts": ["nid0001"], "cores": [[0, 1, 2, 3]], "gpus": [[]]}},
        {"task_id": 8, "spec": {}, "placement": {}},  # a serial task: no placement
    ]
    refused = p.TaskEntry(1, spec_error=InvalidResourceSpecification({"x"}, "x"))
    assert "spec_error" not in p.encode(p.SubmitTasks(tasks=[refused], payloads=[b""]))[0].decode()


def test_task_entry_takes_a_normalized_spec_positionally():
    spec = normalize_spec({"num_ranks": 2, "cpu_bind": "core"}, default_pmi="cray")
    entry = p.TaskEntry(3, spec)
    assert entry.placement is None
    [decoded] = p.decode(p.encode(p.SubmitTasks(tasks=[entry], payloads=[b"x"]))).tasks
    assert decoded == entry and decoded.spec.pmi == "cray" and decoded.spec.cpu_bind is True


@pytest.mark.parametrize("spec, keys", [
    ({"num_nodes": "x"}, {"ranks_per_node", "num_ranks", "pmi"}),
    ({"num_nodes": 0, "ranks_per_node": 1, "num_ranks": 0, "pmi": "none"}, {"num_nodes"}),
    ({"priority": 10**400}, {"priority"}),
    ({"cores": 4}, {"cores"}),
    ({"cpu_bind": "maybe"}, {"cpu_bind"}),
])
def test_a_spec_that_does_not_validate_fails_only_its_entry(spec, keys):
    header = _header({"type": "SubmitTasks", "tasks": [{"task_id": 1, "spec": spec}, {"task_id": 2, "spec": {}}]})
    decoded = p.decode([header, b"a", b"b"])
    bad, good = decoded.tasks
    assert isinstance(bad.spec_error, InvalidResourceSpecification) and set(bad.spec_error.invalid_keys) == keys
    assert bad.task_id == 1 and bad.spec == TaskSpec() and bad.placement is None
    assert good.spec_error is None and decoded.payloads == [b"a", b"b"]


@pytest.mark.parametrize("placement", [
    {"hosts": ["a"]}, {"hosts": [], "cores": [], "gpus": []}, {"hosts": ["a"], "cores": [[-1]], "gpus": [[]]},
    {"hosts": ["a"], "cores": [[0]], "gpus": [[]], "extra": 1},
])
def test_a_malformed_placement_rejects_the_message(placement):
    header = _header({"type": "SubmitTasks", "tasks": [{"task_id": 1, "spec": {}, "placement": placement}]})
    with pytest.raises(ProtocolError, match=r"malformed SubmitTasks.tasks\[\]: .*placement"):
        p.decode([header, b"a"])


@pytest.mark.parametrize("key, value", [("spec", []), ("spec", "x"), ("spec", None), ("placement", [1]),
                                        ("placement", 3), ("task_id", "1")])
def test_task_entry_fields_of_the_wrong_json_type_reject_the_message(key, value):
    entry = {"task_id": 1, "spec": {}, "placement": {}}
    entry[key] = value
    with pytest.raises(ProtocolError, match=f"field {key!r}"):
        p.decode([_header({"type": "SubmitTasks", "tasks": [entry]}), b"a"])


def test_a_kept_result_travels_with_where_it_is_and_no_payload():
    kept = d.KeptEntry("t10", 1, 1 << 24, "numpy:ndarray")
    message = p.TaskResults(results=[p.TaskResult(task_id=10, status=p.KEPT, host="n2", kept=kept.to_wire())],
                            payloads=[b""])
    decoded = p.decode(p.encode(message))
    assert decoded.results[0].status == p.KEPT and d.KeptEntry.from_wire(decoded.results[0].kept) == kept


@pytest.mark.parametrize("bad", [{}, {"key": "", "manager": 0, "nbytes": 1}, {"key": "k", "manager": -1, "nbytes": 1},
                                 {"key": "k", "manager": 0, "nbytes": True},
                                 {"key": "k", "manager": 0, "nbytes": 1, "type": 7}])
def test_a_malformed_kept_entry_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match="kept result"):
        d.KeptEntry.from_wire(bad)


def test_nested_task_results_are_rebuilt_as_dataclasses():
    decoded = p.decode(p.encode(SAMPLES["TaskResults"]))
    assert all(isinstance(r, p.TaskResult) for r in decoded.results)
    assert [r.status for r in decoded.results] == [p.OK, p.EXCEPTION, p.FAILED]
    assert decoded.results[2].error_type == "WorkerLost"
    assert decoded.results[2].error == "worker died"
    assert decoded.results[0].error_type == "" and decoded.results[0].error == ""


def test_nested_entry_missing_required_field_is_rejected():
    header = _header({"type": "SubmitTasks", "tasks": [{"spec": {}}]})
    with pytest.raises(ProtocolError, match="SubmitTasks.tasks"):
        p.decode([header, b"payload"])


@pytest.mark.parametrize("tasks", [{"task_id": 1}, [1, 2], "tasks", [{"task_id": 1}, None]])
def test_nested_entries_must_be_a_list_of_objects(tasks):
    header = _header({"type": "SubmitTasks", "tasks": tasks})
    with pytest.raises(ProtocolError, match="list of objects"):
        p.decode([header, b"a", b"b"])


def test_unicode_survives_round_trip():
    message = p.Refused(reason="versión ≠ 🚫")
    assert p.decode(p.encode(message)).reason == "versión ≠ 🚫"


def test_empty_batches_round_trip():
    assert p.decode(p.encode(p.SubmitTasks(tasks=[]))) == p.SubmitTasks(tasks=[], payloads=[])
    assert p.decode(p.encode(p.TaskResults(results=[]))) == p.TaskResults(results=[], payloads=[])
    assert p.decode(p.encode(p.Monitoring())) == p.Monitoring(payloads=[])


def test_monitoring_accepts_any_number_of_payloads():
    for n in (0, 1, 5):
        frames = [_header({"type": "Monitoring"})] + [b"r%d" % i for i in range(n)]
        assert p.decode(frames).payloads == frames[1:]


# ---------------------------------------------------------------- rejection

@pytest.mark.parametrize("frames", [[], [b""], [b"", b"payload"]])
def test_empty_frames_are_rejected(frames):
    with pytest.raises(ProtocolError, match="empty"):
        p.decode(frames)


@pytest.mark.parametrize("version", [0, 2, 255, ord("{")])
def test_wrong_version_byte_is_rejected(version):
    header = bytes([version]) + p.encode(p.Goodbye())[0][1:]
    with pytest.raises(ProtocolError, match=f"protocol version {version} is not supported"):
        p.decode([header])


def test_header_without_version_byte_is_rejected():
    # a bare JSON header (version byte forgotten) starts with '{' = 123
    with pytest.raises(ProtocolError, match="version"):
        p.decode([json.dumps({"type": "Goodbye"}).encode()])


@pytest.mark.parametrize("raw", [b"", b"not json", b"{\"type\": \"Goodbye\"", b"\xff\xfe\x00", b"{'type': 'Goodbye'}"])
def test_non_json_header_is_rejected(raw):
    with pytest.raises(ProtocolError, match="not valid JSON"):
        p.decode([bytes([p.PROTOCOL_VERSION]) + raw])


@pytest.mark.parametrize("body", [{}, {"reason": "x"}, {"type": None}, {"type": 3}, [], ["Goodbye"], "Goodbye", 5])
def test_missing_type_is_rejected(body):
    with pytest.raises(ProtocolError, match="no message type"):
        p.decode([_header(body)])


@pytest.mark.parametrize("name", ["Bogus", "goodbye", "", "Message", "TaskEntry", "TaskResult"])
def test_unknown_type_is_rejected(name):
    with pytest.raises(ProtocolError, match="unknown message type"):
        p.decode([_header({"type": name})])


REQUIRED_FIELDS = [(name, f) for name in sorted(SAMPLES) for f in _required(p.Message.registry[name])]


@pytest.mark.parametrize("name,missing", REQUIRED_FIELDS)
def test_each_missing_required_field_is_rejected(name, missing):
    frames = p.encode(SAMPLES[name])
    body = json.loads(frames[0][1:])
    assert missing in body
    del body[missing]
    with pytest.raises(ProtocolError, match=f"malformed {name}"):
        p.decode([_header(body), *frames[1:]])


def test_messages_without_required_fields_need_none():
    # sanity check of the test above: types with no required fields decode from the bare type
    assert p.decode([_header({"type": "Goodbye"})]) == p.Goodbye()
    assert p.decode([_header({"type": "StopWorker"})]) == p.StopWorker()
    assert p.decode([_header({"type": "Shutdown"})]) == p.Shutdown(reason="")


@pytest.mark.parametrize("n_payloads", [0, 1, 3])
def test_submit_tasks_payload_count_mismatch_is_rejected(n_payloads):
    frames = p.encode(p.SubmitTasks(tasks=[p.TaskEntry(task_id=1), p.TaskEntry(task_id=2)],
                                    payloads=[b"a", b"b"]))
    frames = [frames[0]] + [b"x"] * n_payloads
    with pytest.raises(ProtocolError, match=f"2 entries but {n_payloads} payloads"):
        p.decode(frames)


def test_submit_tasks_without_tasks_but_with_payloads_is_rejected():
    frames = [_header({"type": "SubmitTasks", "tasks": []}), b"stray"]
    with pytest.raises(ProtocolError, match="0 entries but 1 payloads"):
        p.decode(frames)


@pytest.mark.parametrize("n_payloads", [0, 2, 4])
def test_task_results_payload_count_mismatch_is_rejected(n_payloads):
    frames = p.encode(SAMPLES["TaskResults"])  # 3 results
    frames = [frames[0]] + [b"x"] * n_payloads
    with pytest.raises(ProtocolError, match=f"3 entries but {n_payloads} payloads"):
        p.decode(frames)


def test_task_results_without_results_but_with_payloads_is_rejected():
    frames = [_header({"type": "TaskResults", "results": []}), b"stray"]
    with pytest.raises(ProtocolError, match="0 entries but 1 payloads"):
        p.decode(frames)


@pytest.mark.parametrize("name", sorted(n for n, c in p.Message.registry.items() if not c.has_payloads))
def test_payloads_on_a_message_that_takes_none_are_rejected(name):
    frames = p.encode(SAMPLES[name])
    assert len(frames) == 1
    with pytest.raises(ProtocolError, match=f"{name} carries no payloads but 2 were sent"):
        p.decode(frames + [b"a", b"b"])


def test_oversized_header_is_rejected(monkeypatch):
    monkeypatch.setattr(p, "MAX_HEADER_BYTES", 32)
    with pytest.raises(ProtocolError, match="exceeds 32"):
        p.decode(p.encode(p.Refused(reason="x" * 64)))
    assert p.decode(p.encode(p.Goodbye())) == p.Goodbye()


# ---------------------------------------------------------------- forward compatibility

def test_unknown_extra_fields_are_ignored_with_a_warning(caplog):
    body = json.loads(p.encode(SAMPLES["Heartbeat"])[0][1:])
    body["future_field"] = {"nested": True}
    body["another"] = 1
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.wire.protocol"):
        decoded = p.decode([_header(body)])
    assert decoded == SAMPLES["Heartbeat"]
    warnings = [r for r in caplog.records if r.name == "parsl_dragon.wire.protocol" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "another" in warnings[0].getMessage() and "future_field" in warnings[0].getMessage()
    assert "Heartbeat" in warnings[0].getMessage()


def test_unknown_extra_fields_in_nested_entries_are_ignored_with_a_warning(caplog):
    body = {"type": "TaskResults",
            "results": [{"task_id": 1, "status": "ok", "duration": 0.5}]}
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.wire.protocol"):
        decoded = p.decode([_header(body), b"result"])
    assert decoded.results == [p.TaskResult(task_id=1, status="ok")]
    messages = [r.getMessage() for r in caplog.records if r.name == "parsl_dragon.wire.protocol"]
    assert any("duration" in m and "TaskResults.results[]" in m for m in messages)


def test_known_fields_produce_no_warning(caplog):
    with caplog.at_level(logging.DEBUG, logger="parsl_dragon.wire.protocol"):
        for message in SAMPLES.values():
            p.decode(p.encode(message))
    assert [r for r in caplog.records if r.name == "parsl_dragon.wire.protocol"] == []


# ---------------------------------------------------------------- versions

def _hello(**overrides):
    values = dict(client_id="c", protocol=p.PROTOCOL_VERSION, parsl_version="2024.1.1",
                  python_version=p.PYTHON_VERSION)
    values.update(overrides)
    return p.Hello(**values)


def test_python_version_constant_matches_interpreter():
    assert p.PYTHON_VERSION == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_check_versions_accepts_matching_client():
    assert p.check_versions(_hello(), "2024.1.1", p.PYTHON_VERSION) is None


def test_check_versions_protocol_mismatch():
    reason = p.check_versions(_hello(protocol=p.PROTOCOL_VERSION + 1), "2024.1.1", p.PYTHON_VERSION)
    assert reason == f"protocol {p.PROTOCOL_VERSION + 1} (client) != {p.PROTOCOL_VERSION} (server)"


def test_check_versions_parsl_mismatch():
    reason = p.check_versions(_hello(parsl_version="2023.5.1"), "2024.1.1", p.PYTHON_VERSION)
    assert reason == "Parsl 2023.5.1 (client) != 2024.1.1 (server)"


def test_check_versions_python_mismatch():
    reason = p.check_versions(_hello(python_version="3.9"), "2024.1.1", "3.11")
    assert reason == "Python 3.9 (client) != 3.11 (server)"


def test_check_versions_reports_protocol_first():
    reason = p.check_versions(_hello(protocol=99, parsl_version="0", python_version="2.7"), "1", "3.11")
    assert reason.startswith("protocol 99")


def test_check_versions_works_on_a_decoded_hello():
    hello = p.decode(p.encode(_hello(parsl_version="9.9")))
    assert "Parsl 9.9 (client)" in p.check_versions(hello, "2024.1.1", p.PYTHON_VERSION)


# ---------------------------------------------------------------- error type

def test_protocol_error_is_value_error_and_executor_error():
    with pytest.raises(ProtocolError) as info:
        p.decode([])
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ExecutorError)
    assert str(info.value) == "empty message"


def test_protocol_error_can_be_caught_as_value_error():
    with pytest.raises(ValueError):
        p.decode([b"\x01{"])


def test_error_reply_says_what_kind_of_refusal_it_is():
    assert p.ErrorReply(reason="bad").code == p.REJECTED
    decoded = p.decode(p.encode(p.ErrorReply(reason="no session", code=p.NO_SESSION)))
    assert decoded.code == p.NO_SESSION and len({p.REJECTED, p.NO_SESSION, p.STOPPING}) == 3


def test_payload_error_names_the_size_the_limit_and_the_setting():
    assert frames.payload_error("the result", 2**30, 2**30) is None
    text = frames.payload_error("the result of task 7", int(1.25 * 2**30), 2**30)
    assert "the result of task 7 is 1,342,177,280 bytes (1.25 GiB)" in text
    assert "over max_payload_bytes 1,073,741,824 (1.00 GiB" in text and "PARSL_DRAGON_MAX_PAYLOAD" in text
    assert "is 3,145,728 bytes (3.0 MiB), over max_payload_bytes 1,048,576 (1.0 MiB" in \
        frames.payload_error("it", 3 << 20, 1 << 20)


@pytest.mark.parametrize("sizes", [[0], [10], [11], [25, 3, 30, 10], [3, 4], [100]])
def test_a_payload_of_any_size_travels_in_frames_the_links_carry(monkeypatch, sizes):
    monkeypatch.setattr(frames, "MAX_FRAME_BYTES", 10)
    payloads = [bytes([65 + i]) * n for i, n in enumerate(sizes)]
    message = p.TaskResults(results=[p.TaskResult(task_id=i, status=p.OK) for i in range(len(sizes))],
                            payloads=payloads)
    wire = p.encode(message)
    assert all(len(frame) <= 10 for frame in wire[1:]), "no frame over the limit"
    assert len(wire) - 1 == sum(max(1, -(-n // 10)) for n in sizes)
    assert (b'"chunks"' in wire[0]) == any(n > 10 for n in sizes), "the header says so only when needed"
    decoded = p.decode([bytes(frame) for frame in wire])
    assert decoded.payloads == payloads and [r.task_id for r in decoded.results] == list(range(len(sizes)))


@pytest.mark.parametrize("chunks", [[2], [1, 1, 1], [0, 2], ["2"], 2, [True, 1], [-1, 3]])
def test_chunk_counts_that_do_not_match_the_frames_are_refused(chunks):
    header = _header({"type": "TaskResults", "results": [{"task_id": 1, "status": "ok"},
                                                         {"task_id": 2, "status": "ok"}], "chunks": chunks})
    with pytest.raises(ProtocolError, match="chunks|2 entries but 1 payloads"):
        p.decode([header, b"a", b"b"])


def test_chunk_counts_on_a_message_without_payloads_are_refused():
    with pytest.raises(ProtocolError, match="carries no payloads"):
        p.decode([_header({"type": "Heartbeat", "sent": 1.0, "chunks": [1]})])


def test_a_large_message_is_announced_and_its_receiver_waits_for_it_longer():
    small = p.TaskResults(results=[p.TaskResult(task_id=1, status=p.OK)], payloads=[b"r"])
    assert [p.decode(f) for f in p.encode_with_notice(small)] == [small], "no notice for a small one"
    big = p.TaskResults(results=[p.TaskResult(task_id=2, status=p.OK)], payloads=[b"\0" * (frames.NOTICE_BYTES + 1)])
    notice, message = [p.decode(f) for f in p.encode_with_notice(big)]
    assert notice == p.Incoming(nbytes=frames.NOTICE_BYTES + 1) and message.payloads == big.payloads
    assert p.encode_with_notice(p.Heartbeat(sent=1.0)) == [p.encode(p.Heartbeat(sent=1.0))]
    assert frames.lease_extension(2560 << 20) == 256.0, "2.5 GiB at 10 MiB/s"
