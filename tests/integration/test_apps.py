"""Python and bash apps through a real Dragon server: results, errors, files, scale."""
import os

import parsl
import pytest
from parsl import bash_app, python_app
from parsl.app.errors import AppTimeout, BashExitFailure

from .conftest import dragon_config


@pytest.fixture(scope="module")
def dfk(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("apps")
    old = os.getcwd()
    os.chdir(run_dir)
    dfk = parsl.load(dragon_config(run_dir / "runinfo"))
    yield dfk
    dfk.cleanup()
    parsl.clear()
    os.chdir(old)


class CustomError(Exception):
    pass


@python_app
def square(x):
    return x * x


@python_app
def worker_identity():
    import os
    return os.getpid(), os.environ.get("DRAGON_MY_PUID"), os.environ.get("PARSL_DRAGON_SERVER_ID")


@python_app
def raise_custom(message):
    raise CustomError(message)


@python_app
def divide(a, b):
    return a / b


@bash_app
def echo(message, stdout=None, stderr=None):
    return f"echo {message}; echo to-stderr 1>&2"


@bash_app
def exit_with(code):
    return f"exit {code}"


@bash_app
def sleeper(seconds, walltime=None):
    return f"sleep {seconds}"


@bash_app
def print_cwd(stdout=None):
    return "pwd"


def test_python_results(dfk):
    assert [square(i).result(timeout=60) for i in range(10)] == [i * i for i in range(10)]


def test_runs_on_persistent_dragon_worker(dfk):
    identities = {worker_identity().result(timeout=60) for _ in range(5)}
    assert len(identities) == 1, "one worker per node here: every task must run in the same process"
    pid, puid, server_id = identities.pop()
    assert pid != os.getpid()
    assert puid is not None and int(puid) > 0, "worker must be a Dragon-managed process"
    assert server_id, "worker must belong to our server"


def test_python_exception_types_survive(dfk):
    with pytest.raises(CustomError, match="custom failure"):
        raise_custom("custom failure").result(timeout=60)
    with pytest.raises(ZeroDivisionError):
        divide(1, 0).result(timeout=60)


def test_bash_stdout_stderr_files(dfk, tmp_path):
    out, err = tmp_path / "echo.out", tmp_path / "echo.err"
    assert echo("hello-dragon", stdout=str(out), stderr=str(err)).result(timeout=60) == 0
    assert out.read_text().strip() == "hello-dragon"
    assert "to-stderr" in err.read_text()


def test_bash_exit_code(dfk):
    with pytest.raises(BashExitFailure) as info:
        exit_with(7).result(timeout=60)
    assert info.value.exitcode == 7


def test_bash_walltime(dfk):
    with pytest.raises(AppTimeout):
        sleeper(30, walltime=1).result(timeout=60)
    assert sleeper(0, walltime=20).result(timeout=60) == 0


def test_bash_working_directory_is_driver_cwd(dfk, tmp_path):
    out = tmp_path / "cwd.out"
    print_cwd(stdout=str(out)).result(timeout=60)
    assert os.path.realpath(out.read_text().strip()) == os.path.realpath(os.getcwd())


def test_fan_out_1000(dfk):
    futures = [square(i) for i in range(1000)]
    assert [f.result(timeout=300) for f in futures] == [i * i for i in range(1000)]
