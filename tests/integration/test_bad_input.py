"""Bad input from users: the task fails with a clear error, and nothing else is affected.

One DFK for the module (one server, one persistent worker); after every failure a normal
task must still return its result on the same worker process.

What Parsl offers for a task's working directory: nothing. Neither ``python_app`` nor
``bash_app`` takes a ``cwd``; tasks run in the worker's directory (the server's, which is
the driver's at block start on a ``LocalProvider``). A task that changes directory must not
move the worker for later tasks; ``test_bad_working_directory`` checks the failing case.
"""
import os
import socket

import parsl
import pytest
from parsl import bash_app, python_app
from parsl.app.errors import AppException, BadStdStreamFile, BashExitFailure
from parsl.serialize.errors import DeserializationError

from .conftest import dragon_config


@pytest.fixture(scope="module")
def dfk(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bad_input")
    dfk = parsl.load(dragon_config(run_dir / "runinfo"))
    yield dfk
    dfk.cleanup()
    parsl.clear()


@pytest.fixture(scope="module")
def worker_pid(dfk):
    return pid().result(timeout=180)


@pytest.fixture(autouse=True)
def still_serving(worker_pid):
    """After each test: a normal task works, on the same worker process (nothing crashed)."""
    yield
    assert square(12).result(timeout=60) == 144
    assert pid().result(timeout=60) == worker_pid, "the worker process was replaced"


@python_app
def square(x):
    return x * x


@python_app
def pid():
    import os
    return os.getpid()


# ---------------------------------------------------------------- what cannot be pickled

def test_unpicklable_function_fails_at_submit():
    sock = socket.socket()

    def uses_a_socket():
        return sock.fileno()

    try:
        with pytest.raises(TypeError, match="cannot pickle 'socket' object"):
            python_app(uses_a_socket)().result(timeout=60)
    finally:
        sock.close()


def test_unpicklable_argument_fails_at_submit():
    with socket.socket() as sock, pytest.raises(TypeError, match="cannot pickle 'socket' object"):
        square(sock).result(timeout=60)


@python_app
def returns_a_generator():
    return (i for i in range(3))


def test_unpicklable_result():
    with pytest.raises(TypeError, match="cannot pickle 'generator' object"):
        returns_a_generator().result(timeout=60)


class CarriesASocket(Exception):
    def __init__(self):
        super().__init__("an exception holding a socket")
        self.sock = socket.socket()


@python_app
def raise_unpicklable_exception():
    from tests.integration.test_bad_input import CarriesASocket
    raise CarriesASocket()


def test_exception_that_cannot_be_pickled_on_the_worker():
    """Parsl hands the worker the exception inside a RemoteExceptionWrapper (as a result); pickling
    it fails, and that failure is what the driver sees."""
    with pytest.raises(TypeError, match="cannot pickle 'socket' object"):
        raise_unpicklable_exception().result(timeout=60)


# ---------------------------------------------------------------- what cannot be unpickled on the driver

class NeedsTwoArguments(Exception):
    """Pickles as ``(cls, (message,))`` but its constructor needs two: the classic unpickling failure."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def _refuse_to_rebuild(message):
    raise RuntimeError(f"refusing to rebuild {message!r}")


class RefusesToUnpickle(Exception):
    def __reduce__(self):
        return (_refuse_to_rebuild, (str(self),))


@python_app
def raise_needs_two_arguments():
    from tests.integration.test_bad_input import NeedsTwoArguments
    raise NeedsTwoArguments("two arguments", 2)


@python_app
def raise_refuses_to_unpickle():
    from tests.integration.test_bad_input import RefusesToUnpickle
    raise RefusesToUnpickle("this one")


@python_app
def raise_worker_only_class(directory):
    import os
    import sys
    with open(os.path.join(directory, "worker_only_errors.py"), "w") as handle:
        handle.write("class WorkerOnlyError(Exception):\n    pass\n")
    sys.path.insert(0, directory)
    try:
        import worker_only_errors
    finally:
        sys.path.remove(directory)
    raise worker_only_errors.WorkerOnlyError("only the worker can import this class")


@pytest.mark.parametrize("app,detail", [
    (raise_needs_two_arguments, "missing 1 required positional argument"),
    (raise_refuses_to_unpickle, "refusing to rebuild"),
])
def test_exception_that_cannot_be_unpickled_on_the_driver(app, detail):
    with pytest.raises(DeserializationError, match=detail):
        app().result(timeout=60)


def test_exception_class_only_the_worker_can_import(tmp_path):
    with pytest.raises(DeserializationError, match="No module named 'worker_only_errors'"):
        raise_worker_only_class(str(tmp_path)).result(timeout=60)


@python_app
def call_sys_exit(code):
    import sys
    sys.exit(code)


def test_sys_exit_in_a_task_fails_only_that_task():
    """SystemExit re-raised on the driver would escape Parsl's ``except Exception`` handlers and
    leave the AppFuture unresolved; the worker reports it as an AppException instead."""
    with pytest.raises(AppException, match=r"the task called sys.exit\(3\)") as info:
        call_sys_exit(3).result(timeout=60)
    assert isinstance(info.value.__cause__, SystemExit)


def _exit_on_load(code):
    raise SystemExit(code)


class ExitsOnUnpickle(Exception):
    def __reduce__(self):
        return (_exit_on_load, (4,))


@python_app
def raise_exits_on_unpickle():
    from tests.integration.test_bad_input import ExitsOnUnpickle
    raise ExitsOnUnpickle()


def test_exception_that_exits_while_unpickled_on_the_driver():
    with pytest.raises(DeserializationError):
        raise_exits_on_unpickle().result(timeout=5)


# ---------------------------------------------------------------- bash apps

@bash_app
def run(command, stdout=None, stderr=None):
    return command


def test_missing_executable_exits_127(tmp_path):
    err = tmp_path / "missing.err"
    with pytest.raises(BashExitFailure) as info:
        run("/no/such/executable --flag", stderr=str(err)).result(timeout=60)
    assert info.value.exitcode == 127
    assert "No such file or directory" in err.read_text()
    with pytest.raises(BashExitFailure) as info:
        run("no-such-command-parsl-dragon").result(timeout=60)
    assert info.value.exitcode == 127


def test_stdout_in_a_directory_that_cannot_exist(tmp_path):
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    with pytest.raises(BadStdStreamFile, match="a-file/out.txt"):
        run("echo never", stdout=str(not_a_directory / "out.txt")).result(timeout=60)
    with pytest.raises(BadStdStreamFile):
        run("echo never", stderr="/proc/version/err.txt").result(timeout=60)


def test_stdout_in_a_missing_directory_is_created(tmp_path):
    """Parsl's bash wrapper creates missing parent directories: not an error."""
    out = tmp_path / "new" / "dirs" / "out.txt"
    assert run("echo made", stdout=str(out)).result(timeout=60) == 0
    assert out.read_text().strip() == "made"


@python_app
def change_directory(path):
    import os
    os.chdir(path)


@python_app
def working_directory():
    import os
    return os.getcwd()


def test_bad_working_directory(tmp_path):
    before = working_directory().result(timeout=60)
    with pytest.raises(FileNotFoundError, match="/nonexistent/parsl-dragon"):
        change_directory("/nonexistent/parsl-dragon").result(timeout=60)
    with pytest.raises(BashExitFailure) as info:
        run("cd /nonexistent/parsl-dragon && echo unreachable").result(timeout=60)
    assert info.value.exitcode == 1
    assert working_directory().result(timeout=60) == before
    assert os.path.isdir(before)
