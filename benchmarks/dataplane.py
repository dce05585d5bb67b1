"""Moving arrays between tasks: kept results against values, HTEX and ThreadPool, one run.

Two workloads, each executor in a fresh child process (so that its peak RSS and its I/O are
its own), one after another:

* **DAG**: N producers each return an S-MB numpy array; one consumer takes them all
  (``inputs=``) and returns their sum. Makespan: submit of the first producer to the
  consumer's result (median of ``--repeat`` rounds in the child, after one warm-up task).
* **echo**: the driver sends an S-MB array to a task that returns it, one after another,
  ``--echo-rounds`` times; MB/s = (bytes sent + bytes received) / time.

Executors: ``dragon`` (DragonExecutor, values travel), ``dragon-kept`` (the producers'
``keep_result: True``: results stay in the block's DDict, the consumer reads them there),
``htex`` (HighThroughputExecutor, local) and ``threads`` (ThreadPool: no serialization, no
I/O; the floor). Every executor gets the same worker count (``--workers``).

Per run it reports makespan, **bytes through the driver** (sent and received on the driver
process's TCP sockets, from the kernel's per-socket counters that ``ss -tinp`` shows; for
DragonExecutor, whose links to a server on the driver's host are Unix sockets, its own count
of the bytes on its links, ``DragonExecutor.link_bytes``), driver
peak RSS and, for echo, MB/s; then the ratios against HTEX from the same run. It asserts
nothing: the targets (kept DAG >= 5x HTEX with <= 1 % of the bytes through the driver; echo
>= 1.5x HTEX's MB/s) are for the reader.

    python benchmarks/dataplane.py [--n 8,32] [--sizes 1,16,64] [--repeat 3] [--only dragon,dragon-kept,htex,threads]
"""
from __future__ import annotations

import argparse
import fcntl
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict

EXECUTORS = ("dragon", "dragon-kept", "htex", "threads")
MB = 1 << 20


def elements(size_mb: float) -> int:
    """Float64 elements of an array of ``size_mb`` MB (at least one)."""
    return max(1, int(size_mb * (1 << 20)) // 8)


def produce(i, size_mb, parsl_resource_specification={}):
    import numpy
    return numpy.full(max(1, int(size_mb * (1 << 20)) // 8), float(i))  # elements(size_mb), self-contained


def consume(inputs=()):
    return float(sum(float(a[0]) * len(a) for a in inputs))


def echo(array):
    return array


def socket_bytes(pid: int) -> int:
    """Bytes sent and received so far on the TCP sockets process ``pid`` holds (``ss -tinp``:
    the kernel's per-socket counters; libzmq's sends and receives do not show in /proc/PID/io)."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, check=True).stdout
    total, mine = 0, False
    for line in out.splitlines():
        if line and not line[0].isspace():
            mine = f"pid={pid}," in line
        elif mine:
            for name in ("bytes_sent", "bytes_received"):
                match = re.search(rf"\b{name}:(\d+)", line)
                total += int(match.group(1)) if match else 0
    return total


def config(name: str, workers: int, run_dir: str, kept_memory: int) -> Any:
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
    from parsl.providers import LocalProvider
    if name.startswith("dragon"):
        from parsl_dragon import DragonExecutor
        executor: Any = DragonExecutor(label="dragon", workers_per_node=workers, kept_results_memory=kept_memory)
    elif name == "htex":
        executor = HighThroughputExecutor(label="htex", max_workers_per_node=workers,
                                          provider=LocalProvider(init_blocks=1, max_blocks=1))
    else:
        executor = ThreadPoolExecutor(label="threads", max_threads=workers)
    return Config(executors=[executor], run_dir=run_dir, strategy_period=0.1)


def child(args: argparse.Namespace) -> None:
    """One executor, one workload shape: print one JSON line of figures."""
    import parsl
    from parsl import python_app
    producer, consumer, echo_app = python_app(produce), python_app(consume), python_app(echo)
    spec = {"keep_result": True} if args.executor == "dragon-kept" else {}
    with parsl.load(config(args.executor, args.workers, args.run_dir, args.kept_memory)) as dfk:
        executor = dfk.executors[args.executor.split("-")[0]]

        def through_driver() -> int:  # DragonExecutor's links may be Unix sockets, which ss does not count
            return executor.link_bytes if hasattr(executor, "link_bytes") else socket_bytes(os.getpid())

        consumer(inputs=[producer(0, 1, parsl_resource_specification=spec)]).result()  # warm up
        before = through_driver()
        if args.workload == "dag":
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                parts = [producer(i, args.size, parsl_resource_specification=spec) for i in range(args.n)]
                total = consumer(inputs=parts).result()
                times.append(time.perf_counter() - start)
                expected = float(sum(i * elements(args.size) for i in range(args.n)))
                assert total == expected, f"wrong sum {total} != {expected}"
                del parts
                for _ in range(2):  # this round's references go: their kept results are evicted in the pause
                    gc.collect()  # twice: the consumer's result wakes this thread while Parsl's callbacks still
                    time.sleep(args.pause / 2)  # hold its task record, a cycle that is garbage only after them
            seconds = statistics.median(times)
            moved = args.n * elements(args.size) * 8
        else:
            import numpy
            array = numpy.ones(elements(args.size))
            start = time.perf_counter()
            for _ in range(args.echo_rounds):
                back = echo_app(array).result()
                assert len(back) == len(array)
            seconds = (time.perf_counter() - start) / args.echo_rounds
            moved = 2 * elements(args.size) * 8
        rounds = args.repeat if args.workload == "dag" else args.echo_rounds
        through = (through_driver() - before) / rounds
    print(json.dumps({"seconds": seconds, "through_driver": through, "moved": moved,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)


def run_child(executor: str, workload: str, n: int, size: int, args: argparse.Namespace, tmp: str) -> Dict[str, float]:
    run_dir = os.path.join(tmp, f"{executor}-{workload}-{n}-{size}")
    command = [sys.executable, __file__, "--child", "--executor", executor, "--workload", workload, "--n", str(n),
               "--size", str(size), "--repeat", str(args.repeat), "--workers", str(args.workers),
               "--echo-rounds", str(args.echo_rounds), "--pause", str(args.pause), "--run-dir", run_dir,
               "--kept-memory", str(args.kept_memory)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{executor} {workload} n={n} size={size} failed (rc {out.returncode}):\n"
                           f"{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def show(label: str, figures: Dict[str, Dict[str, float]], workload: str) -> None:
    htex = figures.get("htex")
    print(f"\n{label}")
    print(f"  {'executor':12s} {'time s':>8s} {'MB/s':>8s} {'through driver MB':>18s} {'% of moved':>10s} "
          f"{'peak RSS MB':>11s} {'x HTEX speed':>12s}")
    for name, f in figures.items():
        rate = f["moved"] / MB / f["seconds"]
        speed = f"x{htex['seconds'] / f['seconds']:.2f}" if htex and name != "htex" else "-"
        print(f"  {name:12s} {f['seconds']:8.3f} {rate:8.1f} {f['through_driver'] / MB:18.1f} "
              f"{100 * f['through_driver'] / f['moved']:9.2f}% {f['peak_rss'] / MB:11.0f} {speed:>12s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="8,32", help="producers per DAG, comma-separated")
    parser.add_argument("--sizes", default="1,16,64", help="MB per array, comma-separated (0.001: a 1 KB array)")
    parser.add_argument("--repeat", type=int, default=3, help="DAG rounds per figure (median)")
    parser.add_argument("--echo-rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="workers of every executor")
    parser.add_argument("--pause", type=float, default=2.0,
                        help="seconds between DAG rounds (the previous round's kept results are evicted meanwhile)")
    parser.add_argument("--kept-memory", type=int, default=8 << 30, help="DragonExecutor kept_results_memory")
    parser.add_argument("--only", default=",".join(EXECUTORS))
    parser.add_argument("--no-echo", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--executor", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.n = int(args.n)
        child(args)
        return
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    names = [n for n in args.only.split(",") if n]
    lock = open("/tmp/parsl-dragon-integration.lock", "a")  # never beside another busy-polling runtime
    fcntl.flock(lock, fcntl.LOCK_EX)
    print(f"{os.uname().nodename}: {os.cpu_count()} cores; workers {args.workers}; DAG median of {args.repeat}, "
          f"echo {args.echo_rounds} round trips", flush=True)
    with tempfile.TemporaryDirectory(prefix="parsl-dragon-dataplane-") as tmp:
        for size in [float(s) for s in args.sizes.split(",")]:
            for n in [int(x) for x in args.n.split(",")]:
                figures = {name: run_child(name, "dag", n, size, args, tmp) for name in names}
                show(f"DAG: {n} producers x {size} MB -> 1 consumer", figures, "dag")
            if not args.no_echo:
                figures = {name: run_child(name, "echo", 1, size, args, tmp) for name in names
                           if name != "dragon-kept"}
                show(f"echo: {size} MB there and back", figures, "echo")


if __name__ == "__main__":
    main()
