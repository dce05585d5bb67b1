"""Fixtures shared by the unit tests (those of the whole suite are in ``tests/conftest.py``).

* ``worker_link_server``: a :class:`WorkerLinkServer` standing in for the server end of a worker
  link (a block's backend socket), with the worker-link variables (``WORKER_LINK_VARS``) pointing
  at it in ``os.environ``. Used by the task-side code that opens a worker link:
  ``$PARSL_MPI_PREFIX`` (test_mpirun.py) and the monitoring radio (test_monitoring.py).
  (test_cli.py's ``fake_server`` is another thing: a server's client-facing socket.)
"""
import threading
import time

import pytest
import zmq

from parsl_dragon.server.auth import WORKER_DOMAIN, start_authenticator
from parsl_dragon.vocabulary import ENV_WORKER_ADDRESS, ENV_WORKER_SECRET, ENV_WORKER_SERVER_KEY
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.security import ephemeral_pair, make_curve_server

WAIT_S = 10.0  # the most the fake server waits for a request (a subprocess starts in ~1 s)


class WorkerLinkServer:
    """The block's backend socket: a CURVE ROUTER that admits only the worker key (real ZAP).

    A test either uses ``sock`` itself, or lets a thread answer the first request
    (:meth:`answer`) or drop the link after reading it (:meth:`vanish`); requests read by the
    thread are kept in ``requests``."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        server_keys, worker_keys = ephemeral_pair(), ephemeral_pair()
        self.authenticator = start_authenticator(self.context, [], [worker_keys.public])
        self.sock = self.context.socket(zmq.ROUTER)
        make_curve_server(self.sock, server_keys.secret, WORKER_DOMAIN)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.env = {ENV_WORKER_ADDRESS: f"tcp://127.0.0.1:{port}", ENV_WORKER_SECRET: worker_keys.secret.decode(),
                    ENV_WORKER_SERVER_KEY: server_keys.public.decode()}
        self.requests = []
        self._thread = None

    def answer(self, *replies: p.Message, after_s: float = 0.0) -> None:
        """Answer the next request with ``replies``, in order, ``after_s`` seconds after it came
        (as long as its ranks run), from a thread."""
        self._start(self._serve, replies, after_s)

    def vanish(self) -> None:
        """Read the next request, then close the socket, as a server that stops does."""
        self._start(self._serve_and_close)

    def _start(self, target, *args) -> None:
        self._thread = threading.Thread(target=target, args=args, name="worker-link-server", daemon=True)
        self._thread.start()

    def _read_request(self):
        if not self.sock.poll(WAIT_S * 1000):
            return None
        identity, *frames = self.sock.recv_multipart()
        self.requests.append(p.decode(frames))
        return identity

    def _serve(self, replies, after_s) -> None:
        identity = self._read_request()
        if identity is None:
            return
        time.sleep(after_s)
        for reply in replies:
            self.sock.send_multipart([identity, *p.encode(reply)])

    def _serve_and_close(self) -> None:
        if self._read_request() is not None:
            self.sock.close(linger=0)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(WAIT_S)
        self.authenticator.stop()
        self.context.destroy(linger=0)


@pytest.fixture
def worker_link_server(monkeypatch):
    """A :class:`WorkerLinkServer`, with the worker-link variables pointing at it in ``os.environ``."""
    fake = WorkerLinkServer()
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)
    yield fake
    fake.close()
