"""What one kept-results operation costs: the block's shelf (Dragon's DDict) op by op.

In a real runtime (``dragon -s``; the script starts it and takes the machine-wide lock of the
test sessions and the other benchmarks itself), a shelf over this node (``Shelf.create``, as a
block's server makes it) and one client process (``Shelf.attach``, as a worker does) time, as
medians of ``--ops`` operations each:

* ``free-space query``: the manager's stats (``dstats``), which a put asks first when it cannot
  read them from the manager's pool;
* ``free blocks from the pool``: the same figures read from the manager's pool, attached, as a
  worker reads them before each put;
* ``put 1 KB``, ``put 1 MB``: a value written on the node's manager (``handle[key] = [bytes]``);
* ``Shelf.put 1 MB``: what a worker does per kept result (node lock, free blocks, put);
* ``encode + Shelf.put 1 MB array``: the same for a numpy array, in the kept form (task/codec.py);
* ``get 1 KB``, ``get 1 MB``, ``delete``;

and the CPU share of the busiest process of the runtime over ``--idle`` seconds with the shelf
up and nothing to do. ``--dragon-orchestrator`` makes the shelf with Dragon's own orchestrator
start, without the fix of ``server/shelf.py`` (its managers' exception monitor spins a core):
the before figures, in the same run::

    .venv/bin/python benchmarks/shelf_ops.py
    .venv/bin/python benchmarks/shelf_ops.py --dragon-orchestrator
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK_FILE = "/tmp/parsl-dragon-integration.lock"
sys.path.insert(0, REPO)  # this tree's parsl_dragon, here and in the runtime's processes

from parsl_dragon.host.processes import all_pids, cpu_seconds  # noqa: E402


def median_ms(operation: Callable[[int], Any], count: int) -> float:
    times = []
    for i in range(count):
        started = time.perf_counter()
        operation(i)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def client(descriptor: str, pools: List[str], count: int, results: Any) -> None:
    """A worker's view: attach, then each operation ``count`` times on this node's manager."""
    import numpy

    from parsl_dragon.server.shelf import Shelf
    from parsl_dragon.task import codec
    shelf = Shelf.attach(descriptor, pools)
    manager = shelf.local_manager
    handle = shelf._handle(manager)
    small, large = [b"s" * 1024], [b"l" * (1 << 20)]
    arrays = [numpy.full((1 << 20) // 8, float(i)) for i in range(count)]
    figures = {
        "free-space query": median_ms(lambda i: handle.dstats, count),
        "free blocks from the pool": median_ms(lambda i: shelf._pool_figures(manager, handle), count),
        "put 1 KB": median_ms(lambda i: handle.__setitem__(f"s{i}", small), count),
        "put 1 MB": median_ms(lambda i: handle.__setitem__(f"l{i}", large), count),
        "Shelf.put 1 MB": median_ms(lambda i: shelf.put(f"w{i}", large), count),
        "encode + Shelf.put 1 MB array": median_ms(lambda i: shelf.put(f"a{i}", codec.encode(arrays[i]).parts), count),
        "get 1 KB": median_ms(lambda i: handle[f"s{i}"], count),
        "get 1 MB": median_ms(lambda i: handle[f"l{i}"], count),
        "delete": median_ms(lambda i: handle.__delitem__(f"s{i}"), count),
    }
    results.put(figures)
    shelf.close()


def machine_cpu_seconds() -> Dict[int, float]:
    """CPU seconds (user + system) so far of every process of this machine still there."""
    return {pid: seconds for pid, seconds in ((pid, cpu_seconds(pid)) for pid in all_pids()) if seconds is not None}


def inside(args: argparse.Namespace) -> None:
    """In the runtime: make the shelf, time a client's operations, then the idle CPU."""
    from parsl_dragon.server import shelf as shelves
    multiprocessing.set_start_method("dragon")
    if args.dragon_orchestrator:
        shelves._patient_orchestrator = contextlib.nullcontext  # Dragon's own orchestrator start
    with tempfile.TemporaryDirectory(prefix="parsl-dragon-shelf-ops-") as directory:
        shelf = shelves.Shelf.create(1, 1 << 30, directory)
        try:
            results = multiprocessing.Queue()
            worker = multiprocessing.Process(target=client, args=(shelf.descriptor, shelf.pools, args.ops, results))
            worker.start()
            figures = results.get()
            worker.join()
            before = machine_cpu_seconds()
            time.sleep(args.idle)
            after = machine_cpu_seconds()
            busiest = max(after[pid] - before[pid] for pid in after if pid in before and pid != os.getpid())
            figures["busiest process, idle (% of a core)"] = 100 * busiest / args.idle
        finally:
            shelf.close()
    print(json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=50, help="operations of each kind (median)")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle CPU measured")
    parser.add_argument("--dragon-orchestrator", action="store_true",
                        help="Dragon's own DDict orchestrator start, without server/shelf.py's fix")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    lock = open(LOCK_FILE, "a")  # never beside another busy-polling runtime
    fcntl.flock(lock, fcntl.LOCK_EX)
    command = [shutil.which("dragon", path=env["PATH"]), "-s", sys.executable, os.path.abspath(__file__), "--inside",
               "--ops", str(args.ops), "--idle", str(args.idle)]
    command += ["--dragon-orchestrator"] if args.dragon_orchestrator else []
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        sys.exit(f"the runtime failed (rc {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    which = "Dragon's own" if args.dragon_orchestrator else "parsl-dragon's (server/shelf.py)"
    print(f"{os.uname().nodename}: {os.cpu_count()} cores; orchestrator start: {which}; medians of {args.ops}")
    for name, value in json.loads(lines[-1]).items():
        print(f"  {name:38s} {value:8.2f}" + ("" if "%" in name else " ms"))


if __name__ == "__main__":
    main()
