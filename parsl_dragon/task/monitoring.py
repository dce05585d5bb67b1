"""Monitoring radio that carries Parsl monitoring records over the server's worker link.

Parsl's ``monitor_wrapper`` creates a sender inside the worker (and inside the
resource-monitor child it forks). Each record goes, as a ``Monitoring``
message, to the block's server over a CURVE link using the worker keys the
server put in the worker's environment; the server forwards it to the owning
executor, which puts it on the DFK's monitoring queue. So monitoring works from
inside an allocation without any extra port being reachable from the driver.
"""
from __future__ import annotations

import logging
import os
import pickle
from multiprocessing.queues import Queue
from typing import Optional

import zmq
from parsl.monitoring.radios.base import MonitoringRadioReceiver, MonitoringRadioSender, RadioConfig
from parsl.utils import RepresentationMixin

from parsl_dragon.wire import protocol as p
from parsl_dragon.wire.security import make_worker_link

logger = logging.getLogger(__name__)


class DragonRadio(RadioConfig, RepresentationMixin):
    """Default ``remote_monitoring_radio`` of :class:`~parsl_dragon.DragonExecutor`."""

    def create_sender(self) -> MonitoringRadioSender:
        return DragonRadioSender()

    def create_receiver(self, *, run_dir: str, resource_msgs: Queue) -> MonitoringRadioReceiver:
        return _ExecutorReceiver()


class _ExecutorReceiver(MonitoringRadioReceiver):
    """Nothing to run: the executor's result thread delivers the records."""

    def shutdown(self) -> None:
        pass


class DragonRadioSender(MonitoringRadioSender):
    """Sends each record to the server; one socket per process (fork-safe)."""

    def __init__(self) -> None:
        self._pid: Optional[int] = None
        self._socket: Optional[zmq.Socket] = None

    def _connect(self) -> zmq.Socket:
        if self._socket is None or self._pid != os.getpid():
            context = zmq.Context()  # a new context: the parent's is unusable after fork
            try:
                sock = context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 2000)  # a sender dropped right after send() still delivers
                sock.connect(make_worker_link(sock, os.environ))
            except BaseException:  # not inside a worker (KeyError): leave no context behind
                context.destroy(linger=0)
                raise
            self._socket, self._pid = sock, os.getpid()
        return self._socket

    def send(self, message: object) -> None:
        try:
            sock = self._connect()
        except KeyError:
            logger.error("Not inside a parsl-dragon worker: monitoring record dropped")
            return
        sock.send_multipart(p.encode(p.Monitoring(payloads=[pickle.dumps(message)])))
