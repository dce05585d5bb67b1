"""Soak: >= 100,000 tasks through one DragonExecutor; every future resolves exactly once, correctly.

Not part of CI (it takes minutes). Task mix, by task number ``i``:

* every ``--fail-every``-th (default 20, i.e. 5%): a python_app raising ``ValueError("soak <i>")``;
* every ``--bash-every``-th (default 250): a bash_app ``exit <c>``, ``c = (i / bash_every) % 4``
  (0 succeeds, else
  ``BashExitFailure`` with that exit code);
* the rest: a no-op python_app returning ``i`` (so a result routed to the wrong future shows).

Tasks are submitted in batches of ``--batch``; each AppFuture gets a done-callback that counts
its resolutions and checks the outcome. At the end every task must have resolved exactly once
with the expected outcome, else the exit status is 1. Prints the counts, elapsed time and
throughput. Takes the same machine-wide lock as the Dragon test sessions.

    python benchmarks/soak.py [--tasks 100000] [--batch 5000] [--workers-per-node N]
"""
from __future__ import annotations

import argparse
import collections
import fcntl
import os
import sys
import tempfile
import threading
import time
from typing import Dict, List

import parsl
from parsl import bash_app, python_app
from parsl.app.errors import BashExitFailure
from parsl.config import Config

from parsl_dragon import DragonExecutor


@python_app
def noop(i):
    return i


@python_app
def fail(i):
    raise ValueError(f"soak {i}")


@bash_app
def exit_with(code):
    return f"exit {code}"


class Ledger:
    """Resolutions per task and outcome counts; fed by done-callbacks on any thread."""

    def __init__(self, total: int) -> None:
        self.lock = threading.Lock()
        self.calls = bytearray(total)  # resolutions per task (saturates at 255)
        self.outcomes: Dict[str, int] = collections.Counter()
        self.wrong: List[str] = []
        self.codes: Dict[int, int] = {}  # bash tasks: expected exit code

    def expect(self, i: int, kind: str, future) -> None:
        future.add_done_callback(lambda f: self._resolved(i, kind, f))

    def _resolved(self, i: int, kind: str, future) -> None:
        error = future.exception()
        if kind == "noop":
            ok = error is None and future.result() == i
        elif kind == "fail":
            ok = isinstance(error, ValueError) and str(error) == f"soak {i}"
        else:
            code = self.codes[i]
            ok = (error is None and future.result() == 0) if code == 0 else (
                isinstance(error, BashExitFailure) and error.exitcode == code)
            kind = f"bash exit {code}"
        with self.lock:
            self.calls[i] = min(255, self.calls[i] + 1)
            self.outcomes[kind if ok else f"WRONG {kind}"] += 1
            if not ok and len(self.wrong) < 20:
                self.wrong.append(f"task {i} ({kind}): {(error if error else future.result())!r}")


def bash_code(i: int, args: argparse.Namespace) -> int:
    return (i // args.bash_every) % 4


def submit(i: int, args: argparse.Namespace, ledger: Ledger):
    if i % args.bash_every == 0:
        ledger.codes[i] = bash_code(i, args)
        kind, future = "bash", exit_with(bash_code(i, args))
    elif i % args.fail_every == 1:
        kind, future = "fail", fail(i)
    else:
        kind, future = "noop", noop(i)
    ledger.expect(i, kind, future)
    return future


def soak(args: argparse.Namespace, run_dir: str) -> int:
    ledger = Ledger(args.tasks)
    started = time.perf_counter()
    dfk = parsl.load(Config(executors=[DragonExecutor(label="dragon", workers_per_node=args.workers_per_node)],
                            run_dir=run_dir, strategy_period=0.2))
    try:
        noop(-1).result(timeout=300)
        ready = time.perf_counter()
        print(f"server up after {ready - started:.1f}s; submitting {args.tasks} tasks in batches of {args.batch}",
              flush=True)
        for first in range(0, args.tasks, args.batch):
            futures = [submit(i, args, ledger) for i in range(first, min(args.tasks, first + args.batch))]
            for future in futures:
                try:
                    future.result(timeout=args.task_timeout)
                except Exception:
                    pass  # outcomes are checked by the ledger
            done = first + len(futures)
            elapsed = time.perf_counter() - ready
            print(f"  {done:>7d} tasks  {elapsed:7.1f}s  {done / elapsed:7.0f} tasks/s", flush=True)
        elapsed = time.perf_counter() - ready
        time.sleep(1.0)  # a late second resolution would show up here
    finally:
        dfk.cleanup()
        parsl.clear()
    return report(ledger, args.tasks, elapsed)


def report(ledger: Ledger, total: int, elapsed: float) -> int:
    with ledger.lock:
        once = sum(1 for c in ledger.calls if c == 1)
        never = sum(1 for c in ledger.calls if c == 0)
        twice = sum(1 for c in ledger.calls if c > 1)
        outcomes = dict(sorted(ledger.outcomes.items()))
    print(f"\n{total} tasks in {elapsed:.1f}s: {total / elapsed:.0f} tasks/s")
    print(f"resolved exactly once: {once}; never: {never}; more than once: {twice}")
    for kind, count in outcomes.items():
        print(f"  {kind:14s} {count:>7d}")
    for line in ledger.wrong:
        print("  " + line)
    wrong = sum(n for k, n in outcomes.items() if k.startswith("WRONG"))
    good = once == total and not wrong
    print("SOAK PASSED" if good else "SOAK FAILED")
    return 0 if good else 1


def main() -> int:
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--fail-every", type=int, default=20, help="every n-th task raises (default: 5%%)")
    parser.add_argument("--bash-every", type=int, default=250, help="every n-th task is a bash_app")
    parser.add_argument("--workers-per-node", type=int, default=None)
    parser.add_argument("--task-timeout", type=float, default=600.0, help="seconds to wait for one task")
    args = parser.parse_args()
    lock = open("/tmp/parsl-dragon-integration.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    with tempfile.TemporaryDirectory(prefix="parsl-dragon-soak-") as tmp:
        return soak(args, os.path.join(tmp, "runinfo"))


if __name__ == "__main__":
    sys.exit(main())
