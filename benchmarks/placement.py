"""Planning time of the pure slot-table scheduler on a simulated large allocation.

No Dragon, no sockets: it drives ``parsl_dragon.core.placement.SlotTable`` directly on a
simulated allocation (default 1,000 nodes x 64 cores, 16 workers per node) and prints,
for each scenario, the time to plan every task (all ``submit`` calls) and to release
them again. Scenarios with 10,000 ranks in total:

* ``mpi-1000x10``: 1,000 single-node MPI tasks of 10 ranks;
* ``mpi-1x10000``: one MPI task of 10,000 ranks over 1,000 nodes (10 per node);
* ``serial-10000``: 10,000 serial tasks;

and one with a deep queue (``churn``): the allocation full of serial tasks, 10,000
mixed MPI/serial tasks waiting with a few priorities, then one release per event
until everything has run (time per event). It asserts nothing.

    python benchmarks/placement.py [--nodes 1000] [--cores 64] [--workers 16] [--repeat 3]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Callable, List, Tuple

from parsl_dragon.core.placement import NodeSlots, Request, SlotTable


def make_table(args: argparse.Namespace) -> SlotTable:
    return SlotTable([NodeSlots(f"nid{i:05d}", args.cores, workers=args.workers) for i in range(args.nodes)])


def plan_and_release(table: SlotTable, requests: List[Request]) -> Tuple[float, float, int]:
    """Seconds to submit all requests, seconds to release them all, and how many started."""
    begin = time.perf_counter()
    started = [p.task_id for r in requests for p in table.submit(r)]
    planned = time.perf_counter() - begin
    begin = time.perf_counter()
    pending = list(started)
    while pending:
        pending.extend(p.task_id for p in table.release(pending.pop()))
    return planned, time.perf_counter() - begin, len(started)


def mpi_small(args: argparse.Namespace) -> List[Request]:
    return [Request(i, ranks_per_node=10) for i in range(1000)]


def mpi_one_big(args: argparse.Namespace) -> List[Request]:
    return [Request(0, num_nodes=args.nodes, ranks_per_node=10000 // args.nodes)]


def serial(args: argparse.Namespace) -> List[Request]:
    return [Request(i) for i in range(10000)]


def churn(args: argparse.Namespace, rng: random.Random) -> Tuple[float, int, int]:
    """Fill the allocation, queue 10,000 mixed tasks, release one per event: (s, events, max queued)."""
    table = make_table(args)
    running = [p.task_id for i in range(args.nodes * args.workers) for p in table.submit(Request(i))]
    tid = len(running)
    for _ in range(10000):
        kind = rng.random()
        prio = rng.choice([0, 0, 1, 2])
        if kind < 0.6:
            req = Request(tid, priority=prio)
        elif kind < 0.95:
            req = Request(tid, ranks_per_node=rng.choice([2, 4, 8, 16]), priority=prio)
        else:
            req = Request(tid, num_nodes=rng.choice([2, 8, 64]), ranks_per_node=rng.choice([8, 64]), priority=prio)
        running.extend(p.task_id for p in table.submit(req))
        tid += 1
    max_queued = table.queued
    events = 0
    begin = time.perf_counter()
    while running:
        running.extend(p.task_id for p in table.release(running.pop(rng.randrange(len(running)))))
        events += 1
    return time.perf_counter() - begin, events, max_queued


def report(name: str, args: argparse.Namespace, build: Callable) -> None:
    runs = []
    for _ in range(args.repeat):
        requests = build(args)
        runs.append(plan_and_release(make_table(args), requests))
    plan = statistics.median(r[0] for r in runs)
    free = statistics.median(r[1] for r in runs)
    ranks = sum(r.num_nodes * r.ranks_per_node for r in requests)
    print(f"{name:14s} tasks={len(requests):6d} ranks={ranks:6d} started={runs[0][2]:6d} "
          f"plan={plan * 1e3:8.1f} ms ({plan / len(requests) * 1e6:6.1f} us/task) "
          f"release={free * 1e3:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--cores", type=int, default=64)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"allocation: {args.nodes} nodes x {args.cores} cores, {args.workers} workers/node; "
          f"median of {args.repeat}")
    report("mpi-1000x10", args, mpi_small)
    report("mpi-1x10000", args, mpi_one_big)
    report("serial-10000", args, serial)
    seconds, events, max_queued = churn(args, random.Random(args.seed))
    print(f"{'churn':14s} queued={max_queued:6d} events={events:6d} "
          f"total={seconds * 1e3:8.1f} ms ({seconds / events * 1e6:6.1f} us/event)")


if __name__ == "__main__":
    main()
