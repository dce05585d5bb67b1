"""Throughput, round-trip latency and cold start: DragonExecutor vs HTEX vs ThreadPool, one run.

For each executor, in this process, one after another:

* cold start: ``parsl.load`` to the first no-op result;
* round trip: ``--latency-tasks`` sequential no-op tasks, submit -> result (p50, p99);
* throughput: ``parsl-perf`` style, batches of no-op tasks submitted at once, until
  ``--duration`` seconds are spent; tasks/s over all batches.

Then it prints every figure and the ratios against HTEX and ThreadPool measured in
this same run (timings on a shared 2-core machine are noisy: use ``--repeat`` and
compare medians). It asserts nothing: targets belong to humans reading the ratios.

    python benchmarks/throughput.py [--duration 10] [--repeat 3] [--only dragon,htex,threads]
"""
from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import parsl
from parsl import python_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.providers import LocalProvider

from parsl_dragon import DragonExecutor


@python_app
def noop():
    return None


def dragon_config(run_dir: str) -> Config:
    return Config(executors=[DragonExecutor(label="dragon")],
                  run_dir=run_dir, strategy_period=0.1)


def htex_config(run_dir: str) -> Config:
    return Config(executors=[HighThroughputExecutor(label="htex", provider=LocalProvider(init_blocks=1,
                                                                                         max_blocks=1))],
                  run_dir=run_dir, strategy_period=0.1)


def threads_config(run_dir: str) -> Config:
    return Config(executors=[ThreadPoolExecutor(label="threads", max_threads=2)], run_dir=run_dir)


CONFIGS: Dict[str, Callable[[str], Config]] = {"dragon": dragon_config, "htex": htex_config,
                                                "threads": threads_config}


def measure(name: str, duration: float, batch: int, latency_tasks: int, run_dir: str) -> Dict[str, float]:
    start = time.perf_counter()
    dfk = parsl.load(CONFIGS[name](run_dir))
    try:
        noop().result()
        cold = time.perf_counter() - start
        for _ in range(20):  # warm up the path
            noop().result()
        rtts = []
        for _ in range(latency_tasks):
            t0 = time.perf_counter()
            noop().result()
            rtts.append(time.perf_counter() - t0)
        done, spent = 0, 0.0
        while spent < duration:
            t0 = time.perf_counter()
            futures = [noop() for _ in range(batch)]
            for f in futures:
                f.result()
            spent += time.perf_counter() - t0
            done += batch
    finally:
        dfk.cleanup()
        parsl.clear()
    rtts.sort()
    return {"cold_s": cold, "p50_ms": 1000 * rtts[len(rtts) // 2],
            "p99_ms": 1000 * rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))], "tasks_per_s": done / spent}


def main() -> None:
    # HTEX starts interchange.py / process_worker_pool.py from PATH: use this venv's.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of throughput batches per executor")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--latency-tasks", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", default="dragon,htex,threads")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    # Same lock as the Dragon test sessions: never measure beside another busy-polling runtime.
    lock = open("/tmp/parsl-dragon-integration.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    results: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="parsl-dragon-bench-") as tmp:
        for round_ in range(args.repeat):
            for name in names:
                run_dir = os.path.join(tmp, f"{name}-{round_}")
                results[name].append(measure(name, args.duration, args.batch, args.latency_tasks, run_dir))
                print(f"round {round_ + 1} {name:8s} " + "  ".join(
                    f"{k}={v:.3f}" for k, v in results[name][-1].items()), flush=True)
    medians = {n: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for n, runs in results.items()}
    print(f"\nmedians over {args.repeat} round(s), {os.cpu_count()} cores")
    print(f"{'executor':10s} {'cold start s':>12s} {'p50 ms':>8s} {'p99 ms':>8s} {'tasks/s':>9s}")
    for name, m in medians.items():
        print(f"{name:10s} {m['cold_s']:12.2f} {m['p50_ms']:8.2f} {m['p99_ms']:8.2f} {m['tasks_per_s']:9.0f}")
    if "dragon" in medians:
        for other in (n for n in medians if n != "dragon"):
            d, o = medians["dragon"], medians[other]
            print(f"dragon / {other}: throughput x{d['tasks_per_s'] / o['tasks_per_s']:.2f}, "
                  f"p50 round trip x{d['p50_ms'] / o['p50_ms']:.2f}, cold start x{d['cold_s'] / o['cold_s']:.2f}")


if __name__ == "__main__":
    main()
