"""Throughput, round-trip latency and cold start: DragonExecutor vs HTEX vs ThreadPool, one run.

For each executor, in this process, one after another:

* cold start: ``parsl.load`` to the first no-op result; for DragonExecutor broken down by the
  block's measured start-up milestones (``DragonExecutor.startup_timeline``, ``host/startup.py``);
* round trip: ``--latency-tasks`` sequential no-op tasks, submit -> result (p50, p99);
* throughput: ``parsl-perf`` style, batches of no-op tasks submitted at once, until
  ``--duration`` seconds are spent; tasks/s over all batches.

Each round also measures Dragon's own start-up as a baseline: ``dragon -s`` running a script
that starts one ``dragon.native.process.Process`` of ``/bin/true`` and joins it (launch to the
process's completion, and to the launcher's exit).

Then it prints every figure and the ratios against HTEX and ThreadPool measured in
this same run (timings on a shared 2-core machine are noisy: use ``--repeat`` and
compare medians). It asserts nothing: targets belong to humans reading the ratios.

    python benchmarks/throughput.py [--duration 10] [--repeat 3] [--only dragon,htex,threads]
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import parsl
from parsl import python_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.providers import LocalProvider

from parsl_dragon import DragonExecutor
from parsl_dragon.host import startup
from parsl_dragon.server.boot import choose_transport

BASELINE_SCRIPT = """
import time
from dragon.native.process import Process
process = Process(target="/bin/true", args=[])
process.start()
process.join()
print("FIRST_PROCESS_DONE", time.time(), flush=True)
"""

# DragonExecutor's cold start, hop by hop along its critical path: (figure, from milestone, to milestone).
# "load" is parsl.load(); worker_ready overlaps the handshake, first task starts at the later of both.
STEPS = [
    ("block submit", "load", startup.JOB_LAUNCHED),
    ("boot", startup.JOB_LAUNCHED, startup.RUNTIME_LAUNCHED),
    ("runtime start", startup.RUNTIME_LAUNCHED, startup.SERVER_STARTED),
    ("server ready", startup.SERVER_STARTED, startup.SERVER_READY),
    ("handshake", startup.SERVER_READY, startup.WELCOME),
    ("worker ready", startup.SERVER_READY, startup.WORKER_READY),
    ("first task", "usable", startup.FIRST_RESULT),
]


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


def dragon_baseline(run_dir: str) -> Dict[str, float]:
    """Dragon alone: ``dragon -s`` starting one /bin/true Process; seconds from launch to that
    process's completion and to the launcher's exit."""
    os.makedirs(run_dir, exist_ok=True)
    script = os.path.join(run_dir, "baseline.py")
    with open(script, "w") as handle:
        handle.write(BASELINE_SCRIPT)
    command = [shutil.which("dragon") or "dragon", "-s", "-t", choose_transport("auto"), sys.executable, script]
    launched = time.time()
    out = subprocess.run(command, capture_output=True, text=True, cwd=run_dir, timeout=300).stdout
    exited = time.time()
    done = [float(line.split()[1]) for line in out.splitlines() if line.startswith("FIRST_PROCESS_DONE")]
    return {"first_process_s": done[0] - launched if done else float("nan"), "exit_s": exited - launched}


def breakdown(timeline: startup.Timeline, loaded: float) -> Dict[str, float]:
    """DragonExecutor's cold start by step (seconds), from the block's measured milestones."""
    at = dict(timeline.at, load=loaded)
    if startup.WELCOME in at:
        at["usable"] = max(at[startup.WELCOME], at.get(startup.WORKER_READY, 0.0))
    return {f"{step}_s": at[last] - at[first] if first in at and last in at else float("nan")
            for step, first, last in STEPS}


def measure(name: str, duration: float, batch: int, latency_tasks: int, run_dir: str) -> Dict[str, float]:
    loaded = time.time()
    start = time.perf_counter()
    dfk = parsl.load(CONFIGS[name](run_dir))
    steps: Dict[str, float] = {}
    try:
        noop().result()
        cold = time.perf_counter() - start
        if name == "dragon":
            steps = breakdown(dfk.executors["dragon"].startup_timeline("0"), loaded)
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
            "p99_ms": 1000 * rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))], "tasks_per_s": done / spent, **steps}


def report(medians: Dict[str, Dict[str, float]], baseline: Optional[Dict[str, float]], repeat: int) -> None:
    print(f"\nmedians over {repeat} round(s), {os.cpu_count()} cores")
    print(f"{'executor':10s} {'cold start s':>12s} {'p50 ms':>8s} {'p99 ms':>8s} {'tasks/s':>9s}")
    for name, m in medians.items():
        print(f"{name:10s} {m['cold_s']:12.2f} {m['p50_ms']:8.2f} {m['p99_ms']:8.2f} {m['tasks_per_s']:9.0f}")
    if baseline is not None:
        print(f"dragon -s baseline: first /bin/true process done {baseline['first_process_s']:.2f} s, "
              f"launcher exit {baseline['exit_s']:.2f} s")
    if "dragon" not in medians:
        return
    d = medians["dragon"]
    print("DragonExecutor cold start by step: " + ", ".join(f"{step} {d[step + '_s']:.2f} s" for step, _, _ in STEPS))
    if baseline is not None:
        print(f"DragonExecutor cold start - Dragon's first process: {d['cold_s'] - baseline['first_process_s']:+.2f} s")
    for other in (n for n in medians if n != "dragon"):
        o = medians[other]
        print(f"dragon / {other}: throughput x{d['tasks_per_s'] / o['tasks_per_s']:.2f}, "
              f"p50 round trip x{d['p50_ms'] / o['p50_ms']:.2f}, p99 round trip x{d['p99_ms'] / o['p99_ms']:.2f}, "
              f"cold start x{d['cold_s'] / o['cold_s']:.2f}")


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
    baselines: List[Dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="parsl-dragon-bench-") as tmp:
        for round_ in range(args.repeat):
            if "dragon" in names:
                baselines.append(dragon_baseline(os.path.join(tmp, f"baseline-{round_}")))
                print(f"round {round_ + 1} baseline " + "  ".join(f"{k}={v:.3f}" for k, v in baselines[-1].items()),
                      flush=True)
            for name in names:
                run_dir = os.path.join(tmp, f"{name}-{round_}")
                results[name].append(measure(name, args.duration, args.batch, args.latency_tasks, run_dir))
                print(f"round {round_ + 1} {name:8s} " + "  ".join(
                    f"{k}={v:.3f}" for k, v in results[name][-1].items()), flush=True)
    medians = {n: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for n, runs in results.items()}
    baseline = {k: statistics.median(b[k] for b in baselines) for k in baselines[0]} if baselines else None
    report(medians, baseline, args.repeat)


if __name__ == "__main__":
    main()
