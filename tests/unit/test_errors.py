"""The error types on the wire and the exceptions they become (errors.py), and how a FAILED
result resolves a future (futures.py)."""
from concurrent.futures import Future

import pytest
from parsl.executors.errors import InvalidResourceSpecification

import parsl_dragon
from parsl_dragon import errors
from parsl_dragon.driver.futures import resolve
from parsl_dragon.errors import (
    INVALID_RESOURCE_SPECIFICATION,
    PAYLOAD_TOO_LARGE,
    SERIALIZATION_ERROR,
    SERVER_LOST,
    TASK_LOST,
    WORKER_LOST,
    DragonExecutorError,
    PayloadTooLarge,
    ServerLost,
    TaskLost,
    WorkerLost,
    failure,
)
from parsl_dragon.wire import protocol as p

WIRE_ERRORS = [
    (SERVER_LOST, ServerLost),
    (WORKER_LOST, WorkerLost),
    (TASK_LOST, TaskLost),
    (PAYLOAD_TOO_LARGE, PayloadTooLarge),
    (SERIALIZATION_ERROR, DragonExecutorError),
    (INVALID_RESOURCE_SPECIFICATION, InvalidResourceSpecification),
]


def test_the_wire_names_are_the_strings_servers_and_workers_send():
    """Old servers and workers send these literals: the names must not drift."""
    assert [name for name, _ in WIRE_ERRORS] == [
        "ServerLost", "WorkerLost", "TaskLost", "PayloadTooLarge", "SerializationError",
        "InvalidResourceSpecification"]


@pytest.mark.parametrize("error_type,cls", WIRE_ERRORS)
def test_each_wire_error_type_becomes_its_exception_with_the_message_kept(error_type, cls):
    exc = failure(error_type, f"{error_type} on host n1: what happened")
    assert type(exc) is cls
    assert "what happened" in str(exc)
    if isinstance(exc, DragonExecutorError):
        assert exc.message == f"{error_type} on host n1: what happened"


def test_invalid_resource_specification_is_parsls_own():
    exc = failure(INVALID_RESOURCE_SPECIFICATION, "num_ranks must be >= 1")
    assert isinstance(exc, InvalidResourceSpecification) and not isinstance(exc, DragonExecutorError)
    assert exc.invalid_keys == set() and "num_ranks must be >= 1" in str(exc)


@pytest.mark.parametrize("error_type", ["", "NoSuchError", "serverlost", "RankFailure"])
def test_an_unknown_wire_error_type_is_a_plain_dragon_executor_error(error_type):
    exc = failure(error_type, "something odd")
    assert type(exc) is DragonExecutorError and exc.message == "something odd"


def test_every_wire_error_type_has_a_constant_and_an_entry():
    constants = {value for name, value in vars(errors).items() if name.isupper() and isinstance(value, str)}
    assert constants == {name for name, _ in WIRE_ERRORS}


def test_rank_launch_error_is_gone():
    assert not hasattr(errors, "RankLaunchError") and "RankLaunchError" not in parsl_dragon.__all__
    assert "RankLaunchError" not in errors.__doc__


def test_a_failed_result_fails_its_future_with_type_host_and_message():
    future = Future()
    resolve(future, p.TaskResult(task_id=1, status=p.FAILED, host="n7", error_type=WORKER_LOST,
                                 error="worker died"), b"")
    with pytest.raises(WorkerLost, match="^WorkerLost on host n7: worker died$"):
        future.result(timeout=1)


def test_an_unknown_failure_without_host_still_fails_the_future():
    future = Future()
    resolve(future, p.TaskResult(task_id=1, status=p.FAILED, error_type="Mystery", error="no idea"), b"")
    with pytest.raises(DragonExecutorError, match="^Mystery: no idea$"):
        future.result(timeout=1)


def test_an_outcome_for_a_resolved_future_is_ignored():
    future = Future()
    future.set_result(1)
    resolve(future, p.TaskResult(task_id=1, status=p.FAILED, error_type=TASK_LOST, error="late"), b"")
    assert future.result() == 1
