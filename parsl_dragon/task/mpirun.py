"""``$PARSL_MPI_PREFIX``: run a command line as the current MPI task's ranks, through Dragon.

    $PARSL_MPI_PREFIX ./sim --step 1        (inside a bash_app with a resource specification)

Asks the block's server (over the worker link whose address and keys are in the
environment) to launch the command on the task's placement, waits, then copies each
rank's output to this process's stdout/stderr, every line prefixed ``[rank N]``. Exits 0
when every rank exited 0; otherwise with the first failing rank's code (1 if that code is
not a plain exit status), after recording the failing ranks for the worker, which turns
the app's failure into a ``RankFailure`` naming them.

It never waits for a server that is not there; the link's socket monitor tells::

    connect      CURVE handshake within PARSL_DRAGON_TIMEOUT ms (default 30 s, -1: no limit);
                 no handshake in time, or the server refuses our key  -> exit 1
    LaunchRanks  wait for RanksDone as long as the ranks run (no limit); but the link
                 dropping meanwhile                                    -> exit 1 at once
                 (no fixed ZMQ identity: a reply for the old link can never arrive)

Every failure prints ``parsl_dragon.task.mpirun: <why>`` on stderr and, inside a
task, records the reason in the rank report. Exit 2: not inside an MPI task (a worker-link
variable missing) or a variable that cannot be used.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from typing import List, Mapping, Optional

import zmq
from zmq.utils.monitor import recv_monitor_message

from parsl_dragon.errors import (
    AuthenticationFailed,
    ConfigurationError,
    HandshakeTimeout,
    ServerConnectionError,
    ServerLost,
)
from parsl_dragon.task.mpi_env import write_report
from parsl_dragon.vocabulary import (
    DEFAULT_TIMEOUT_MS,
    ENV_RANK_REPORT,
    ENV_TASK,
    ENV_TIMEOUT,
    ENV_WORKER_ADDRESS,
    ENV_WORKER_SECRET,
    ENV_WORKER_SERVER_KEY,
    NO_LIMIT,
    RANK_LAUNCHER_MODULE,
    WORKER_LINK_VARS,
    parse_timeout_ms,
)
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.security import make_worker_link

logger = logging.getLogger(__name__)

PROGRAM = RANK_LAUNCHER_MODULE
_HIDDEN = (ENV_WORKER_SECRET,)
_REQUIRED = (ENV_TASK, *WORKER_LINK_VARS)
_LINK_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH


# ---- the environment ------------------------------------------------------------------------

def missing_variables(env: Mapping[str, str]) -> List[str]:
    """The variables of an MPI task (its id and worker link) that ``env`` lacks or has empty."""
    return [name for name in _REQUIRED if not env.get(name, "").strip()]


def _not_in_a_task(missing: List[str]) -> str:
    """Why we cannot ask for ranks, naming the ``missing`` variables, and what to do."""
    names = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
    verb = "is" if len(missing) == 1 else "are"
    hint = ("give the app a parsl_resource_specification with num_nodes / ranks_per_node" if ENV_TASK in missing
            else "run it with the environment the worker gave the app (not through env -i, sudo or ssh)")
    return f"not inside an MPI task of DragonExecutor ({names} {verb} not set); {hint}"


def _task_id(env: Mapping[str, str]) -> int:
    try:
        return int(env[ENV_TASK])
    except ValueError as exc:
        raise ConfigurationError(f"{ENV_TASK} must be the server's id of the task, got {env[ENV_TASK]!r}") from exc


def link_timeout_ms(env: Mapping[str, str]) -> int:
    """How long the CURVE handshake with the server may take: ``PARSL_DRAGON_TIMEOUT`` or the default."""
    value = env.get(ENV_TIMEOUT, "")
    if not value.strip():
        return DEFAULT_TIMEOUT_MS
    return parse_timeout_ms(value, f"environment variable {ENV_TIMEOUT}")


# ---- the link -------------------------------------------------------------------------------

def request_launch(argv: List[str], task: int, timeout_ms: int) -> p.RanksDone:
    """Ask the server for the ranks of ``task`` once the link is up; its ``RanksDone``.

    Raises
    ------
    HandshakeTimeout, AuthenticationFailed
        No link within ``timeout_ms``; the server refused our key.
    ServerLost
        The link dropped while the ranks ran.
    ConfigurationError
        The worker-link variables are not a usable address and keys.
    """
    context = zmq.Context()
    try:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(_LINK_EVENTS)
        address = _connect(sock, os.environ)
        await_handshake(monitor, address, timeout_ms)
        env = {k: v for k, v in os.environ.items() if k not in _HIDDEN}
        sock.send_multipart(p.encode(p.LaunchRanks(task_id=task, argv=argv, cwd=os.getcwd(), env=env)))
        return await_ranks_done(sock, monitor, address, task)
    finally:
        context.destroy(linger=0)


def _connect(sock: zmq.Socket, env: Mapping[str, str]) -> str:
    try:
        address = make_worker_link(sock, env)
        sock.connect(address)
    except zmq.ZMQError as exc:
        raise ConfigurationError(f"cannot open the worker link to {env[ENV_WORKER_ADDRESS]!r} ({exc}): "
                                 f"{', '.join(WORKER_LINK_VARS)} must be a ZeroMQ address and two z85 CURVE "
                                 "keys") from exc
    return address


def await_handshake(monitor: zmq.Socket, address: str, timeout_ms: int) -> None:
    """Return once the CURVE handshake with the server succeeded; raise if it cannot in time."""
    deadline = None if timeout_ms == NO_LIMIT else time.monotonic() + timeout_ms / 1000.0
    while True:
        wait = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        if not monitor.poll(wait):
            raise HandshakeTimeout(
                f"no answer from the block's server at {address} within {timeout_ms / 1000:g} s (the CURVE "
                "handshake did not complete): check that the block is still running and that "
                f"{ENV_WORKER_ADDRESS} and {ENV_WORKER_SERVER_KEY} are those of its current server; "
                f"if the server is only slow, raise {ENV_TIMEOUT} (milliseconds, -1: no limit)")
        event = recv_monitor_message(monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise AuthenticationFailed(
                f"the block's server at {address} refused this task's key ({ENV_WORKER_SECRET}): the "
                "worker-link variables are not those of that server (left from an earlier one?)")


def await_ranks_done(sock: zmq.Socket, monitor: zmq.Socket, address: str, task: int) -> p.RanksDone:
    """Wait, without a time limit, for ``RanksDone``; raise :class:`ServerLost` if the link drops."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    while True:
        ready = dict(poller.poll())
        if sock in ready:  # messages first: a reply that came in before the link dropped still counts
            message = _receive(sock)
            if isinstance(message, p.RanksDone):
                return message
        elif recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
            raise ServerLost(
                f"lost the link to the block's server at {address} while the ranks of task {task} ran: "
                "the server is gone or restarted the link, so their outcome can no longer reach this task")


def _receive(sock: zmq.Socket) -> Optional[p.Message]:
    try:
        return p.decode(sock.recv_multipart())
    except p.ProtocolError as exc:
        logger.warning("Ignoring a malformed message from the server: %s", exc)
        return None


# ---- the outcome ----------------------------------------------------------------------------

def relay_output(done: p.RanksDone) -> None:
    """Copy each rank's output files to ours, lines labelled; then remove them."""
    for index, label in enumerate(done.labels):
        name = "mpiexec" if label == "mpiexec" else f"rank-{index}"
        for suffix, stream in (("out", sys.stdout), ("err", sys.stderr)):
            path = os.path.join(done.output_dir, f"{name}.{suffix}")
            try:
                with open(path, errors="replace") as handle:
                    for line in handle:
                        stream.write(f"[{label}] {line.rstrip(chr(10))}\n")
            except OSError:
                continue
    sys.stdout.flush()
    sys.stderr.flush()
    remove_output(done)


def remove_output(done: p.RanksDone) -> None:
    """Remove the directory the server made for this launch's output, if it made one."""
    if done.output_dir:
        shutil.rmtree(done.output_dir, ignore_errors=True)


def exit_code(done: p.RanksDone) -> int:
    failed = [(label, code) for label, code in zip(done.labels, done.exit_codes) if code != 0]
    if os.environ.get(ENV_RANK_REPORT):
        write_report(os.environ[ENV_RANK_REPORT], failed)
    if not failed:
        return 0
    code = failed[0][1]
    return code if 0 < code < 256 else 1


def _fail(error: str, code: int) -> int:
    """Say why on stderr, record it in the rank report (inside a task), and return ``code``."""
    print(f"{PROGRAM}: {error}", file=sys.stderr)
    report = os.environ.get(ENV_RANK_REPORT)
    if report:
        try:
            write_report(report, [], error=error)
        except OSError as exc:  # e.g. the task that set the variable is over: nobody will read it
            print(f"{PROGRAM}: cannot record this in the rank report {report}: {exc.strerror}", file=sys.stderr)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: $PARSL_MPI_PREFIX COMMAND [ARGS...]", file=sys.stderr)
        return 2
    missing = missing_variables(os.environ)
    if missing:
        return _fail(_not_in_a_task(missing), 2)
    try:
        done = request_launch(argv, _task_id(os.environ), link_timeout_ms(os.environ))
    except ConfigurationError as exc:
        return _fail(str(exc), 2)
    except (ServerConnectionError, ServerLost) as exc:
        return _fail(str(exc), 1)
    if done.error:
        remove_output(done)
        return _fail(done.error, 1)
    relay_output(done)
    return exit_code(done)


if __name__ == "__main__":
    sys.exit(main())
