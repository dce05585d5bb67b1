"""One link, four ways: should a same-node worker link use ``ipc://`` instead of CURVE over TCP?

A worker's link to its server carries every result that travels. On one node it could be a
Unix socket in the block's private (0700) directory, whose permissions already keep other
users out, instead of TCP with CURVE. This measures, between two processes on this machine
(a DEALER sending, a ROUTER receiving, as worker and server), MB/s for large messages over:

* ``tcp+curve``  what the links use today (tcp://127.0.0.1, CURVE keys);
* ``ipc+curve``  a Unix socket, still encrypted;
* ``ipc``        a Unix socket in a 0700 directory, no CURVE (the directory is the guard);
* ``tcp``        loopback TCP without CURVE (for reference: what CURVE costs).

And the server's hop, for the same sizes: receiving with ``copy=True`` (bytes, as the service
loop does) and sending on, against ``copy=False`` (zmq frames forwarded as they are).

    python benchmarks/links.py [--sizes 1,16,64] [--count 20] [--repeat 3]

It asserts nothing; docs/benchmarks.md records what it printed and the decision taken.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from typing import List, Tuple

import zmq

MB = 1 << 20
WAYS = ("tcp+curve", "ipc+curve", "ipc", "tcp")


def _keys() -> Tuple[Tuple[bytes, bytes], Tuple[bytes, bytes]]:
    return zmq.curve_keypair(), zmq.curve_keypair()


def _receiver(way: str, address: str, server: Tuple[bytes, bytes], ready, count: int, forward: str) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.MAXMSGSIZE, -1)
    if "curve" in way:
        sock.curve_server = True
        sock.curve_secretkey, sock.curve_publickey = server[1], server[0]
    if address.startswith("tcp"):
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        address = f"tcp://127.0.0.1:{port}"
    else:
        sock.bind(address)
    sink = context.socket(zmq.PUSH)  # the hop on: to a peer in this process (inproc), as the server forwards
    sink.bind("inproc://on")
    drain = context.socket(zmq.PULL)
    drain.connect("inproc://on")
    ready.send(address)
    for _ in range(count):
        frames = sock.recv_multipart(copy=(forward != "frames"))
        if forward:
            sink.send_multipart(frames[1:], copy=False)
            drain.recv_multipart(copy=False)
        sock.send_multipart([frames[0], b"ok"])
    context.destroy(linger=0)


def measure(way: str, size: int, count: int, forward: str = "") -> float:
    """MB/s of ``count`` messages of ``size`` bytes, each answered before the next is sent."""
    server, client = _keys()
    with tempfile.TemporaryDirectory(prefix="pd-links-") as tmp:
        os.chmod(tmp, 0o700)
        address = f"ipc://{tmp}/link" if way.startswith("ipc") else "tcp"
        parent, child = multiprocessing.Pipe()
        receiver = multiprocessing.Process(target=_receiver, args=(way, address, server, child, count, forward))
        receiver.start()
        address = parent.recv()
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        if "curve" in way:
            sock.curve_serverkey = server[0]
            sock.curve_publickey, sock.curve_secretkey = client
        sock.connect(address)
        payload = os.urandom(size)
        start = time.perf_counter()
        for _ in range(count):
            sock.send_multipart([b"h", payload], copy=False)
            sock.recv_multipart()
        seconds = time.perf_counter() - start
        context.destroy(linger=0)
        receiver.join(30)
    return size * count / MB / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,16,64", help="MB per message")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{os.cpu_count()} cores; {args.count} messages per figure, median of {args.repeat}; MB/s")
    print(f"  {'way':14s}" + "".join(f"{s:>10d} MB" for s in sizes))
    for way in WAYS:
        figures: List[float] = [statistics.median(measure(way, s * MB, args.count) for _ in range(args.repeat))
                                for s in sizes]
        print(f"  {way:14s}" + "".join(f"{f:13.0f}" for f in figures), flush=True)
    print("the server's hop on (tcp+curve in, inproc out):")
    for forward in ("bytes", "frames"):
        label = {"bytes": "copy=True", "frames": "copy=False"}[forward]
        figures = [statistics.median(measure("tcp+curve", s * MB, args.count, forward) for _ in range(args.repeat))
                   for s in sizes]
        print(f"  {label:14s}" + "".join(f"{f:13.0f}" for f in figures), flush=True)


if __name__ == "__main__":
    main()
