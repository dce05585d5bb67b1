"""MPI launch speed: small MPI tasks per second, DragonExecutor (each PMI backend) vs MPIExecutor, one run.

Every task is a bash app running ``$PARSL_MPI_PREFIX <command>`` with a
``parsl_resource_specification`` of the shape (``1x2``: 1 node x 2 ranks per node). Commands:
``/bin/true`` and an MPI hello (MPI_Init, rank/size, printf, MPI_Finalize) compiled with
``mpicc`` into a temporary directory at start. Executors, one after another in this process:

* DragonExecutor with ``pmi="mpiexec"``, ``"none"``, ``"cray"`` and ``"pmix"``
  (``workers_per_node=2``). A backend that cannot work on this node (``cray`` without Cray
  PMI, ``pmix`` without libpmix, as ``parsl_dragon.server.pmi.problem`` decides) is skipped
  with the reason: a refused ``pmix`` can hang the runtime, so it is never tried. The MPI
  hello is not run under ``none`` (its ranks would be unconnected singletons) unless
  ``--none-hello`` asks for it; the ``check`` column then says what the ranks saw.
* Parsl's ``MPIExecutor`` (``mpi_launcher="mpiexec"``, ``max_workers_per_block=2``); locally its
  block gets ``PBS_NODEFILE`` naming this host, which is all its MPI mode needs.

For each executor: ``parsl.load``, then per shape and command: ``--warmup`` tasks (so block
start-up is not measured), ``--latency-tasks`` tasks one at a time (median submit -> result:
launch latency), then ``--tasks`` tasks submitted at once, timed from the first submit to
the last result (tasks/s). Each task stamps its start and end (bash's ``$EPOCHREALTIME`` around
the launch line), so the report also shows how many tasks actually ran at once and, as "in task",
the median time of the launch line itself among the latency tasks: latency minus it is what the
executor adds around the launcher. Medians over ``--repeat`` rounds (executor order reversed
every other round), then one table per shape and command with the ratios DragonExecutor /
MPIExecutor from this same run. It asserts nothing: targets belong to humans reading it.
Takes the machine-wide lock of the Dragon test sessions for the whole run.

    python benchmarks/mpi_launch.py [--tasks 30] [--repeat 3] [--latency-tasks 10] [--shapes 1x2,2x1]
        [--commands true,hello] [--only mpiexec,none,cray,pmix,mpiexecutor] [--none-hello]

``2x1`` (2 nodes x 1 rank) needs a block of 2 nodes: ``--provider slurm --partition P`` runs
every executor's block as one Slurm job of ``--nodes`` nodes (default 2), with the driver on a
host that reaches the nodes. On this repository's 2-node namespace cluster
(``scripts/slurm/multinode-up.sh``, root only) that host is the control namespace:

    nsenter --net=/run/netns/pdmn-ctl env SLURM_CONF=/run/parsl-dragon-mn/slurm.conf \\
        .venv/bin/python benchmarks/mpi_launch.py --provider slurm --partition debug --shapes 1x2,2x1

(Dragon's 2-node start-up takes 20 s to minutes on 2 shared cores.) With ``--provider local``
(the default) ``2x1`` is skipped with the reason.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import parsl
from parsl import bash_app
from parsl.config import Config
from parsl.executors import MPIExecutor
from parsl.launchers import SimpleLauncher
from parsl.providers import LocalProvider, SlurmProvider

from parsl_dragon import DragonExecutor, DragonLauncher
from parsl_dragon.server.pmi import problem as pmi_problem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
LOCK = "/tmp/parsl-dragon-integration.lock"
BACKENDS = ("mpiexec", "none", "cray", "pmix")
EXECUTORS = BACKENDS + ("mpiexecutor",)
WORKERS = 2  # DragonExecutor workers_per_node and MPIExecutor max_workers_per_block

HELLO_C = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, len;
    char host[MPI_MAX_PROCESSOR_NAME];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
    printf("hello from rank %d of %d on %s\n", rank, size, host);
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
"""
HELLO_LINE = re.compile(r"hello from rank (\d+) of (\d+)")
STAMP = re.compile(r"^@@mpi_launch (start|end) ([0-9.]+)$", re.M)


@bash_app
def mpi_task(command, parsl_resource_specification={}, stdout=None, stderr=None):
    # $EPOCHREALTIME is a bash builtin: the stamps cost no process.
    return ('echo "@@mpi_launch start $EPOCHREALTIME"; $PARSL_MPI_PREFIX ' + command
            + '; rc=$?; echo "@@mpi_launch end $EPOCHREALTIME"; exit $rc')


def label(name: str) -> str:
    return "MPIExecutor" if name == "mpiexecutor" else f"dragon pmi={name}"


def parse_shape(text: str) -> Tuple[int, int]:
    nodes, ranks = text.lower().split("x")
    return int(nodes), int(ranks)


def compile_hello(build: str) -> Tuple[Optional[str], Optional[str]]:
    """Path of the compiled MPI hello, or None and why not."""
    mpicc = shutil.which("mpicc")
    if mpicc is None:
        return None, "no mpicc on PATH"
    source = os.path.join(build, "hello.c")
    with open(source, "w") as handle:
        handle.write(HELLO_C)
    binary = os.path.join(build, "mpi_hello")
    built = subprocess.run([mpicc, "-O2", "-o", binary, source], capture_output=True, text=True)
    if built.returncode != 0:
        return None, f"mpicc failed: {built.stderr.strip()[-300:]}"
    return binary, None


def provider(args: argparse.Namespace, launcher: Any, worker_init: str) -> Any:
    if args.provider == "local":
        return LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1, launcher=launcher, worker_init=worker_init)
    return SlurmProvider(partition=args.partition, nodes_per_block=args.nodes, init_blocks=1, min_blocks=0,
                         max_blocks=1, walltime=args.walltime, launcher=launcher, cmd_timeout=60,
                         worker_init=f"export PATH={VENV_BIN}:$PATH; export PYTHONPATH={REPO}; {worker_init}")


def make_config(name: str, args: argparse.Namespace, run_dir: str, nodefile: str) -> Config:
    if name == "mpiexecutor":
        # Locally, MPIExecutor's MPI mode needs a PBS or Slurm node list; in a Slurm job it has SLURM_NODELIST.
        init = f"export PBS_NODEFILE={nodefile}" if args.provider == "local" else ""
        executor: Any = MPIExecutor(label="mpiexecutor", mpi_launcher="mpiexec", max_workers_per_block=WORKERS,
                                    provider=provider(args, SimpleLauncher(), init))
    else:
        extra: Dict[str, Any] = {}
        if args.provider == "slurm":  # as tests/integration/test_multinode.py: 2 runtimes' worth of polling
            extra = dict(heartbeat_period=5.0, heartbeat_threshold=24, startup_timeout_ms=900_000,
                         timeout_ms=120_000, rank_startup_timeout_ms=600_000)
        executor = DragonExecutor(label=f"dragon-{name}", pmi=name, workers_per_node=WORKERS,
                                  cores_per_node=args.cores_per_node,
                                  provider=None if args.provider == "local" else provider(args, DragonLauncher(), ""),
                                  **extra)
    return Config(executors=[executor], run_dir=run_dir, strategy_period=0.2)


def spec_for(name: str, shape: Tuple[int, int]) -> Dict[str, Any]:
    spec: Dict[str, Any] = {"num_nodes": shape[0], "ranks_per_node": shape[1]}
    if name != "mpiexecutor":  # MPIExecutor refuses keys it does not know
        spec["pmi"] = name
    return spec


def expected_concurrency(name: str, shape: Tuple[int, int], nodes: int, cores: int) -> str:
    """How many tasks of this shape the executor can run at once, and why."""
    num_nodes, ranks = shape
    if name == "mpiexecutor":
        n = min(WORKERS, nodes // num_nodes)
        return f"{n} (max_workers_per_block={WORKERS}; each MPI task holds {num_nodes} whole node(s) of {nodes})"
    by_cores = (cores // ranks) * nodes // num_nodes
    n = min(WORKERS * nodes, by_cores)
    return (f"{n} (workers_per_node={WORKERS}; slot table {cores} cores/node x {nodes} node(s), "
            f"{ranks} rank core(s) per node per task)")


def max_overlap(intervals: List[Tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def stamped_intervals(paths: List[str]) -> List[Tuple[float, float]]:
    """(start, end) of the launch line of each task whose stdout file has both stamps."""
    intervals = []
    for path in paths:
        with open(path, errors="replace") as handle:
            stamps = dict((kind, float(value)) for kind, value in STAMP.findall(handle.read()))
        if "start" in stamps and "end" in stamps:
            intervals.append((stamps["start"], stamps["end"]))
    return intervals


def inspect_outputs(paths: List[str], shape: Tuple[int, int], hello: bool) -> Tuple[Optional[int], str]:
    """(tasks seen running at once, rank check) from the throughput tasks' stdout files."""
    intervals, bad, sizes = stamped_intervals(paths), 0, set()
    want = shape[0] * shape[1]
    for path in paths if hello else []:
        with open(path, errors="replace") as handle:
            seen = [(int(r), int(s)) for r, s in HELLO_LINE.findall(handle.read())]
        sizes.update(s for _, s in seen)
        if sorted(r for r, _ in seen) != list(range(want)) or any(s != want for _, s in seen):
            bad += 1
    overlap = max_overlap(intervals) if len(intervals) == len(paths) else None
    if not hello:
        check = "exit 0"
    elif bad:
        check = f"{bad}/{len(paths)} tasks: ranks not wired up (sizes seen {sorted(sizes)})"
    else:
        check = f"ranks 0..{want - 1} of {want}"
    return overlap, check


def run_case(name: str, shape: Tuple[int, int], command: str, hello: bool, args: argparse.Namespace,
             out_dir: str, first: bool) -> Dict[str, Any]:
    spec = spec_for(name, shape)
    timeout = args.task_timeout

    def submit(tag: str, i: int):
        base = os.path.join(out_dir, f"{tag}-{i}")
        return base + ".out", mpi_task(command, parsl_resource_specification=dict(spec), stdout=base + ".out",
                                       stderr=base + ".err")

    warm = [submit("warm", i)[1] for i in range(args.warmup)]
    for i, future in enumerate(warm):  # the executor's first result may wait for its block to start
        future.result(timeout=args.startup_timeout if first and i == 0 else timeout)
    latencies, inside = [], []
    for i in range(args.latency_tasks):
        t0 = time.perf_counter()
        path, future = submit("lat", i)
        future.result(timeout=timeout)
        latencies.append(time.perf_counter() - t0)
        inside += [end - start for start, end in stamped_intervals([path])]
    t0 = time.perf_counter()
    batch = [submit("tput", i) for i in range(args.tasks)]
    for _, future in batch:
        future.result(timeout=timeout)
    spent = time.perf_counter() - t0
    overlap, check = inspect_outputs([path for path, _ in batch], shape, hello)
    return {"tasks_per_s": args.tasks / spent, "latency_ms": 1000 * statistics.median(latencies),
            "in_task_ms": 1000 * statistics.median(inside) if inside else None, "overlap": overlap, "check": check}


def last_stderr(out_dir: str) -> str:
    """The last line a task of this case wrote to stderr, if any (what the prefix said)."""
    lines = []
    for path in sorted(os.listdir(out_dir)):
        if path.endswith(".err"):
            with open(os.path.join(out_dir, path), errors="replace") as handle:
                text = re.sub(r"--> executable follows <--.*?--> end executable <--", "", handle.read(), flags=re.S)
            lines += [line.strip() for line in text.splitlines() if line.strip()]
    return f"; stderr: {lines[-1][:200]}" if lines else ""


def run_executor(name: str, cases: List[Tuple[str, str, Tuple[int, int], str, bool]], args: argparse.Namespace,
                 tmp: str, round_: int, nodefile: str) -> Dict[Tuple[str, str], Dict[str, Any]]:
    results: Dict[Tuple[str, str], Dict[str, Any]] = {}
    run_dir = os.path.join(tmp, f"runinfo-{name}-{round_}")
    start = time.perf_counter()
    try:
        dfk = parsl.load(make_config(name, args, run_dir, nodefile))
    except Exception as exc:
        parsl.clear()
        return {(s, c): {"error": f"load failed: {type(exc).__name__}: {exc}"} for s, c, _, _, _ in cases}
    try:
        hung = None
        for i, (shape_name, command_name, shape, command, hello) in enumerate(cases):
            out_dir = os.path.join(tmp, f"out-{name}-{round_}-{shape_name}-{command_name}")
            os.makedirs(out_dir)
            try:
                if hung:
                    raise RuntimeError(f"not run: {hung}")
                result = run_case(name, shape, command, hello, args, out_dir, first=i == 0)
            except TimeoutError:  # a wedged block would make every later case wait as long
                hung = f"an earlier {label(name)} task gave no result in time"
                result = {"error": f"no result in time (--task-timeout {args.task_timeout:.0f} s, "
                                   f"--startup-timeout {args.startup_timeout:.0f} s){last_stderr(out_dir)}"}
            except Exception as exc:  # reported in the table; the run goes on
                result = {"error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
            results[(shape_name, command_name)] = result
            shown = "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
            print(f"round {round_ + 1} {label(name):20s} {shape_name} {command_name:5s} {shown}  "
                  f"({time.perf_counter() - start:.0f} s since load)", flush=True)
    finally:
        dfk.cleanup()
        parsl.clear()
    return results


def fmt(ratio: Optional[float]) -> str:
    if ratio is None:
        return "-"
    return f"x{ratio:.2f}" if ratio >= 0.1 else f"x{ratio:.3f}"


def main() -> None:
    # MPIExecutor starts interchange.py / process_worker_pool.py from PATH: use this venv's.
    os.environ["PATH"] = VENV_BIN + os.pathsep + os.environ.get("PATH", "")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=30, help="MPI tasks submitted at once per throughput figure")
    parser.add_argument("--latency-tasks", type=int, default=10, help="MPI tasks run one at a time for latency")
    parser.add_argument("--warmup", type=int, default=3, help="MPI tasks run first and not measured")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shapes", default="1x2,2x1", help="NODESxRANKS_PER_NODE, comma-separated")
    parser.add_argument("--commands", default="true,hello", help="true (/bin/true) and/or hello (MPI hello)")
    parser.add_argument("--only", default=",".join(EXECUTORS), help="of " + ",".join(EXECUTORS))
    parser.add_argument("--none-hello", action="store_true", help="also run the MPI hello under pmi=none")
    parser.add_argument("--cores-per-node", type=int, default=None, help="DragonExecutor cores_per_node")
    parser.add_argument("--task-timeout", type=float, default=120.0, help="seconds to wait for one task")
    parser.add_argument("--startup-timeout", type=float, default=900.0,
                        help="seconds to wait for the first task of an executor (block start-up)")
    parser.add_argument("--provider", choices=("local", "slurm"), default="local")
    parser.add_argument("--partition", default=None, help="Slurm partition (--provider slurm)")
    parser.add_argument("--nodes", type=int, default=2, help="nodes per Slurm block (--provider slurm)")
    parser.add_argument("--walltime", default="00:30:00", help="Slurm block walltime (--provider slurm)")
    parser.add_argument("--tmpdir", default=None, help="where run dirs go (shared with the nodes for slurm)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(EXECUTORS)
    if unknown:
        parser.error(f"unknown executor(s) {sorted(unknown)}; choose from {','.join(EXECUTORS)}")
    nodes = 1 if args.provider == "local" else args.nodes
    cores = args.cores_per_node or os.cpu_count() or 1

    # Same lock as the Dragon test sessions: never measure beside another busy-polling runtime.
    lock = open(LOCK, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for {LOCK} ...", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)

    skipped: Dict[str, str] = {}  # what was not run, and why
    with tempfile.TemporaryDirectory(prefix="parsl-dragon-mpi-bench-", dir=args.tmpdir) as tmp:
        nodefile = os.path.join(tmp, "nodefile")
        with open(nodefile, "w") as handle:
            handle.write(socket.gethostname() + "\n")
        commands: Dict[str, str] = {}
        for command_name in (c for c in args.commands.split(",") if c):
            if command_name == "true":
                commands["true"] = "/bin/true"
            elif command_name == "hello":
                binary, why = compile_hello(tmp)
                if binary is None:
                    skipped["hello"] = f"MPI hello: {why}"
                else:
                    commands["hello"] = binary
            else:
                parser.error(f"unknown command {command_name!r}: true or hello")
        shapes: Dict[str, Tuple[int, int]] = {}
        for shape_name in (s for s in args.shapes.split(",") if s):
            shape = parse_shape(shape_name)
            if shape[0] > nodes:
                skipped[shape_name] = (f"shape {shape_name}: needs {shape[0]} nodes, the block has {nodes} "
                                       f"(--provider slurm --partition P --nodes {shape[0]}; see the usage)")
            else:
                shapes[shape_name] = shape
        plan: Dict[str, List[Tuple[str, str, Tuple[int, int], str, bool]]] = {}
        for name in names:
            why = None if name == "mpiexecutor" else pmi_problem(name)
            if name == "mpiexecutor" and shutil.which("mpiexec") is None:
                why = "MPIExecutor needs an mpiexec on PATH"
            if why:
                skipped[name] = f"{label(name)}: {why}"
                continue
            plan[name] = [(s, c, shape, command, c == "hello") for s, shape in shapes.items()
                          for c, command in commands.items() if not (name == "none" and c == "hello"
                                                                     and not args.none_hello)]
        if "none" in plan and "hello" in commands and not args.none_hello:
            skipped["none-hello"] = ("dragon pmi=none, MPI hello: not run (its ranks would start as unconnected "
                                     "singletons, each rank 0 of 1; --none-hello runs it anyway)")
        print(f"{socket.gethostname()}: {os.cpu_count()} cores, provider {args.provider}, {nodes} node(s) per block; "
              f"{args.tasks} tasks per throughput figure, {args.latency_tasks} for latency, {args.warmup} warm-up, "
              f"{args.repeat} round(s)", flush=True)
        for why in skipped.values():
            print(f"skipped: {why}", flush=True)

        results: Dict[str, List[Dict[Tuple[str, str], Dict[str, Any]]]] = {n: [] for n in plan}
        for round_ in range(args.repeat):
            order = list(plan) if round_ % 2 == 0 else list(reversed(plan))
            for name in order:
                results[name].append(run_executor(name, plan[name], args, tmp, round_, nodefile))

    print(f"\nmedians over {args.repeat} round(s); x = DragonExecutor / MPIExecutor from this run; "
          f"'at once' = most tasks seen running at the same time")
    for shape_name, shape in shapes.items():
        for command_name, command in commands.items():
            rows = []
            for name in plan:
                runs = [r[(shape_name, command_name)] for r in results[name] if (shape_name, command_name) in r]
                if not runs:
                    continue
                good = [r for r in runs if "error" not in r]
                errors = [r["error"] for r in runs if "error" in r]
                row: Dict[str, Any] = {"name": name, "errors": errors, "rounds": len(good)}
                if good:
                    row["tasks_per_s"] = statistics.median(r["tasks_per_s"] for r in good)
                    row["latency_ms"] = statistics.median(r["latency_ms"] for r in good)
                    inside = [r["in_task_ms"] for r in good if r.get("in_task_ms") is not None]
                    row["in_task_ms"] = statistics.median(inside) if inside else None
                    seen = [r["overlap"] for r in good if r["overlap"] is not None]
                    row["seen"] = max(seen) if seen else None
                    row["check"] = "; ".join(sorted({r["check"] for r in good}))
                rows.append(row)
            if not rows:
                continue
            shown = "/bin/true" if command_name == "true" else "MPI hello (mpicc)"
            print(f"\nshape {shape_name} ({shape[0]} node(s) x {shape[1]} rank(s)/node), command {shown}")
            if shape[1] >= cores:
                print(f"  a task takes all {cores} cores of each of its nodes: at most {nodes // shape[0]} such "
                      f"task(s) can run at once on {nodes} node(s), whatever the executor")
            print(f"  {'executor':20s} {'tasks/s':>8s} {'latency ms':>11s} {'in task ms':>11s} {'x tasks/s':>10s} "
                  f"{'x latency':>10s} {'at once':>8s}  check")
            base = next((r for r in rows if r["name"] == "mpiexecutor" and "tasks_per_s" in r), None)
            for row in rows:
                if "tasks_per_s" not in row:
                    print(f"  {label(row['name']):20s} failed: {row['errors'][0]}")
                    continue
                ratio_t = ratio_l = None
                if base is not None and row is not base:
                    ratio_t = row["tasks_per_s"] / base["tasks_per_s"]
                    ratio_l = row["latency_ms"] / base["latency_ms"]
                failed = f" ({len(row['errors'])} round(s) failed: {row['errors'][0]})" if row["errors"] else ""
                in_task = "-" if row["in_task_ms"] is None else f"{row['in_task_ms']:.1f}"
                print(f"  {label(row['name']):20s} {row['tasks_per_s']:8.2f} {row['latency_ms']:11.1f} {in_task:>11s} "
                      f"{fmt(ratio_t):>10s} {fmt(ratio_l):>10s} "
                      f"{'-' if row['seen'] is None else row['seen']:>8}  {row['check']}{failed}")
            for row in rows:
                print(f"  at most at once, {label(row['name'])}: "
                      f"{expected_concurrency(row['name'], shape, nodes, cores)}")
    if skipped:
        print()
        for why in skipped.values():
            print(f"skipped: {why}")


if __name__ == "__main__":
    main()
