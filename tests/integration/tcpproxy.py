"""A loopback TCP proxy for link tests: cut connections, or swallow bytes, on demand.

Test-only. It listens on 127.0.0.1 only and forwards each accepted connection to one
target address on this machine; it runs until ``close()``. ``cut()`` resets every
connection open now (peers see a dropped TCP connection and reconnect through the proxy);
``swallow(True)`` discards what the client side sends (bytes "lost in flight") until
turned off; ``stall(True)`` stops forwarding in both directions (a silent network).
"""
from __future__ import annotations

import select
import socket
import struct
import threading
from typing import List, Tuple


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.pairs: List[Tuple[socket.socket, socket.socket]] = []
        self.accepted = 0
        self.swallowing = False
        self.stalled = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcpproxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def swallow(self, on: bool) -> None:
        self.swallowing = on

    def stall(self, on: bool) -> None:
        self.stalled = on

    def cut(self) -> None:
        """Reset every open connection (RST, as a dropped network would)."""
        with self._lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self.cut()
        self.listener.close()

    def _run(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                socks = [s for pair in self.pairs for s in pair]
            readable = [self.listener] + ([] if self.stalled else socks)
            try:
                ready, _, _ = select.select(readable, [], [], 0.05)
            except (OSError, ValueError):
                continue  # a socket was cut while we waited
            for sock in ready:
                if sock is self.listener:
                    self._accept()
                else:
                    self._forward(sock)

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.target, timeout=5)
        with self._lock:
            self.pairs.append((client, upstream))
            self.accepted += 1

    def _forward(self, sock: socket.socket) -> None:
        with self._lock:
            pair = next((p for p in self.pairs if sock in p), None)
        if pair is None:
            return
        client, upstream = pair
        try:
            data = sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:  # one side closed: close both
            with self._lock:
                if pair in self.pairs:
                    self.pairs.remove(pair)
            for s in pair:
                _reset(s)
            return
        if sock is client and self.swallowing:
            return
        try:
            (upstream if sock is client else client).sendall(data)
        except OSError:
            pass


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
