"""Server scale: how one block's server costs grow with its workers, its nodes and its tasks.

A live server (``python -m parsl_dragon.server.boot`` -> ``dragon -s -t tcp`` -> the real
server, ``PARSL_DRAGON_LOCAL_LINKS=0`` so every link is TCP + CURVE) runs over simulated nodes
(``--simulated-nodes``, ``server/simulated.py``): it starts no worker process; instead a few
processes of this script each open hundreds or thousands of worker links (one DEALER each,
its own identity, the real CURVE handshake and ZAP check, ``WorkerReady``, and a
``TaskResults`` for every ``SubmitTasks``). The client load is the real driver client
(``driver/client.py``): no-op tasks with small payloads (``--payload`` bytes both ways),
never more in flight than workers + 32 (the executor's default window).

For each shape (workers, nodes) it reports, from the server process (psutil, ``/proc``):

* registration: seconds from the first worker link opened to the last ``Worker ... ready``
  in ``server.log``, and the server's CPU per worker over that time;
* file descriptors and RSS with every worker registered, and peak RSS (VmHWM) after the load;
* idle: the server's CPU seconds per second over ``--idle`` seconds with every worker
  registered and the client connected (its leases and heartbeats: workers send none);
* load: tasks dispatched per second (first submit to last result, the whole machine: server,
  client and simulated workers share 2 cores here) and the server's CPU per task.

Shapes: ``--workers`` on ``--per-node`` workers per node (``max`` = the most the server's file
descriptor check admits under this machine's hard limit), then ``--node-sweep`` nodes for
``--node-sweep-workers`` workers. Medians of ``--repeat`` rounds; ``--plot DIR`` writes one
PNG per figure. The runtime is real Dragon: the script takes the machine-wide lock of the test
sessions and the other benchmarks itself, e.g.::

    .venv/bin/python benchmarks/scale.py --repeat 3 --json /tmp/scale.json --plot docs/img

``--plot-only JSON --plot DIR`` redraws from a saved run. ``--dead-worker-poll 1000,100000`` times,
alone in a real runtime, what simulated workers cannot show: the Global Services request a real
server makes every tick over all its workers' puids (``DragonBackend.dead_workers``).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import multiprocessing
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

import psutil
import zmq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK_FILE = "/tmp/parsl-dragon-integration.lock"
sys.path.insert(0, REPO)  # this tree's parsl_dragon, here and in every process this starts (not the installed one)

from parsl_dragon.server import limits  # noqa: E402
from parsl_dragon.server.simulated import LINK_FILE  # noqa: E402
from parsl_dragon.wire import protocol as p  # noqa: E402
from parsl_dragon.wire import security  # noqa: E402
from parsl_dragon.wire.connection import connection_path, read_connection  # noqa: E402

WINDOW_EXTRA = 32          # the executor's default prefetch_capacity
HEARTBEAT_PERIOD = 5.0     # the defaults of both ends' leases: a peer silent 5 s x 3 is lost
LEASE_THRESHOLD = 3
LINKS_PER_PROCESS = 4000   # simulated worker links per process (2 fds each on this side)
READY_MARK = " ready on "  # the service's "Worker %s ready on %s" line
STALL_S = 60.0             # registration given up when no worker registers for this long


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ---- simulated workers (child processes) -------------------------------------------------------
def simulated_workers(link: dict, workers: List[Tuple[str, str]], payload: int, ready, go, stop) -> None:
    """Once ``go`` is set, open one worker link per (worker id, host) and register each; then
    answer every task at once until ``stop`` is set. Waits with epoll on the sockets' own
    (edge-triggered) descriptors, so a wake-up costs what is ready, not what is open."""
    raise_nofile()
    ready.set()  # imported: what follows is what registration costs
    go.wait()
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, len(workers) + 64)
    epoll, socks = select.epoll(), {}
    for worker_id, host in workers:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, worker_id.encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(security.make_worker_link(sock, link["env"]))
        sock.send_multipart(p.encode(p.WorkerReady(worker_id=worker_id, host=host, pid=os.getpid(), puid=0)))
        socks[sock.getsockopt(zmq.FD)] = (sock, host)
        epoll.register(sock.getsockopt(zmq.FD), select.EPOLLIN)
    result = b"r" * payload
    sweep = time.monotonic()
    while not stop.is_set():
        ready_fds = [fd for fd, _ in epoll.poll(0.1)]
        if time.monotonic() - sweep > 1.0:  # an edge missed between a send and a receive: look at all
            ready_fds, sweep = list(socks), time.monotonic()
        for fd in ready_fds:
            sock, host = socks[fd]
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                message = p.decode(sock.recv_multipart())
                if isinstance(message, p.SubmitTasks):
                    sock.send_multipart(p.encode(p.TaskResults(
                        results=[p.TaskResult(task_id=e.task_id, status=p.OK, host=host) for e in message.tasks],
                        payloads=[result] * len(message.tasks))))
    context.destroy(linger=0)


# ---- the block ---------------------------------------------------------------------------------
class Block:
    """One server over simulated nodes, started through boot (which cleans up after the runtime)."""

    def __init__(self, tmp: str, nodes: int, per_node: int, threshold: int) -> None:
        self.dir = os.path.join(tmp, f"block-{nodes}x{per_node}-{time.monotonic_ns()}")
        os.mkdir(self.dir, 0o700)
        self.keys_dir = os.path.join(tmp, "keys")
        security.load_pair(self.keys_dir, security.SERVER)
        self.client_keys = security.load_pair(self.keys_dir, security.CLIENT)
        env = dict(os.environ, PARSL_DRAGON_LOCAL_LINKS="0")
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        self.log = os.path.join(self.dir, "server.log")
        command = [sys.executable, "-m", "parsl_dragon.server.boot", "--block-dir", self.dir, "--transport", "tcp",
                   "--driver-pid", str(os.getpid()), "--", "--connection-file", connection_path(self.dir),
                   "--log-file", self.log, "--key-dir", self.keys_dir, "--simulated-nodes", str(nodes),
                   "--workers-per-node", str(per_node), "--cores-per-node", str(per_node),
                   "--heartbeat-period", str(HEARTBEAT_PERIOD), "--heartbeat-threshold", str(threshold),
                   "--owner-timeout-ms", "-1"]  # the client connects once every worker has registered
        started = time.monotonic()
        self.boot = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.info = self._wait_for_server(60.0)
        self.start_s = time.monotonic() - started  # boot, runtime and server, to the connection file
        self.server = psutil.Process(self.info.pid)
        with open(os.path.join(self.dir, LINK_FILE)) as handle:
            self.link = json.load(handle)

    def _wait_for_server(self, timeout: float):
        path, deadline = connection_path(self.dir), time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(path):
                return read_connection(path)
            if self.boot.poll() is not None:
                break
            time.sleep(0.05)
        tail = open(self.log).read()[-2000:] if os.path.exists(self.log) else ""
        raise RuntimeError(f"no server (boot exit {self.boot.poll()}): {tail}")

    def cpu(self) -> Dict[str, float]:
        """CPU seconds of the server's live threads so far (schedstat: nanoseconds, not clock ticks),
        in all and by thread: ``main`` (the service loop), ``io`` (libzmq's I/O thread: TCP, CURVE),
        ``other`` (the ZAP handler, libzmq's reaper, Dragon's threads)."""
        split = {"main": 0, "io": 0, "other": 0}
        for tid in os.listdir(f"/proc/{self.info.pid}/task"):
            try:
                ns = int(open(f"/proc/{self.info.pid}/task/{tid}/schedstat").read().split()[0])
                name = open(f"/proc/{self.info.pid}/task/{tid}/comm").read()
            except (OSError, ValueError, IndexError):
                continue  # the thread ended meanwhile
            kind = "main" if int(tid) == self.info.pid else "io" if name.startswith("ZMQbg/IO") else "other"
            split[kind] += ns
        split_s = {k: v / 1e9 for k, v in split.items()}
        split_s["all"] = sum(split_s.values())
        return split_s

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.info.pid}/fd"))

    def memory(self) -> Tuple[float, float]:
        """(RSS, peak RSS) in MB."""
        status = open(f"/proc/{self.info.pid}/status").read().split("\n")
        kb = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmRSS", "VmHWM"))}
        return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024

    def ready_count(self, reader) -> int:
        reader["count"] += reader["file"].read().count(READY_MARK)
        return reader["count"]

    def stop(self) -> None:
        if self.boot.poll() is None:
            self.boot.terminate()
        try:
            self.boot.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.boot.kill()
            self.boot.wait()


# ---- the client load ---------------------------------------------------------------------------
class Load:
    """The real driver client, keeping at most ``window`` no-op tasks in flight."""

    def __init__(self, block: Block, payload: int, threshold: int) -> None:
        from parsl_dragon.driver.client import DragonClient
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.received = self.sent = self.total = 0
        self.payload = b"t" * payload
        self.lost = ""
        self.client = DragonClient(block.client_keys, timeout_s=30.0, heartbeat_period=HEARTBEAT_PERIOD,
                                   heartbeat_threshold=threshold, on_results=self._on_results,
                                   on_monitoring=lambda m: None, on_server_lost=self._on_server_lost)
        self.client.start()
        self.server_id = self.client.connect(block.info, owner=True).server_id

    def _on_server_lost(self, server_id: str, why: str) -> None:
        self.lost = why
        self.done.set()

    def _send(self, count: int) -> None:
        for _ in range(count):
            self.sent += 1
            self.client.send_task(self.server_id, p.TaskEntry(task_id=self.sent), self.payload)

    def _on_results(self, server_id: str, message: p.TaskResults) -> None:
        with self.lock:
            self.received += len(message.results)
            self._send(min(len(message.results), self.total - self.sent))
            if self.received >= self.total:
                self.done.set()

    def run(self, tasks: int, window: int) -> float:
        """Seconds for ``tasks`` no-op tasks, at most ``window`` in flight."""
        self.done.clear()
        with self.lock:
            self.received = self.sent = 0
            self.total = tasks
            start = time.monotonic()
            self._send(min(window, tasks))
        if not self.done.wait(600) or self.lost:
            raise RuntimeError(f"{self.received} of {tasks} results after {time.monotonic() - start:.1f} s; "
                               f"server lost: {self.lost or 'no'}")
        return time.monotonic() - start

    def close(self) -> None:
        self.client.disconnect(self.server_id, p.Shutdown(reason="benchmark done"))
        time.sleep(0.5)
        self.client.close()


# ---- one shape ---------------------------------------------------------------------------------
def delta(now: Dict[str, float], before: Dict[str, float]) -> Dict[str, float]:
    return {k: now[k] - before[k] for k in now}


def start_workers(block: Block, workers: int):
    """Processes holding ``workers`` simulated workers, imported and waiting for ``go``."""
    spawn = multiprocessing.get_context("spawn")
    hosts = block.link["nodes"]
    per_node = block.link["workers_per_node"]
    ids = [(f"{hosts[i // per_node]}:{i}", hosts[i // per_node]) for i in range(workers)]
    groups = max(1, -(-workers // LINKS_PER_PROCESS))
    go, stop, procs = spawn.Event(), spawn.Event(), []
    for g in range(groups):
        ready = spawn.Event()
        proc = spawn.Process(target=simulated_workers, args=(block.link, ids[g::groups], PAYLOAD, ready, go, stop),
                             daemon=True)
        proc.start()
        procs.append((proc, ready))
    for proc, ready in procs:
        if not ready.wait(120):
            raise RuntimeError("a simulated worker process did not start")
    return go, stop, procs


def measure(tmp: str, workers: int, nodes: int, idle: float, tasks: int, extra: int = WINDOW_EXTRA,
            threshold: int = LEASE_THRESHOLD) -> Dict[str, float]:
    block = Block(tmp, nodes, workers // nodes, threshold)
    stop, procs = None, []
    try:
        base_fds, (base_rss, _) = block.fds(), block.memory()
        reader = {"file": open(block.log), "count": 0}
        go, stop, procs = start_workers(block, workers)
        cpu0, t0 = block.cpu(), time.monotonic()
        go.set()
        last, progress = 0, time.monotonic()
        while block.ready_count(reader) < workers:
            if reader["count"] > last:
                last, progress = reader["count"], time.monotonic()
            elif time.monotonic() - progress > STALL_S:
                print(f"only {last} of {workers} workers registered: none for {STALL_S:.0f} s", flush=True)
                break
            time.sleep(0.02)
        registered = reader["count"]
        register_s, register_cpu = time.monotonic() - t0, delta(block.cpu(), cpu0)
        time.sleep(1.0)  # let the last handshakes settle
        fds, (rss, _) = block.fds(), block.memory()
        load = Load(block, PAYLOAD, threshold)
        cpu1 = block.cpu()
        time.sleep(idle)
        idle_cpu = delta(block.cpu(), cpu1)["all"] / idle
        cpu2 = block.cpu()
        seconds = load.run(tasks, registered + extra)
        task_cpu = delta(block.cpu(), cpu2)
        _, peak = block.memory()
        load.close()
        return {"workers": workers, "nodes": nodes, "tasks": tasks, "registered": registered, "start_s": block.start_s,
                "register_s": register_s,
                **{f"register_cpu_{k}_us_per_worker".replace("_all", ""): v / registered * 1e6
                   for k, v in register_cpu.items()}, "base_fds": base_fds, "fds": fds,
                "fds_per_worker": (fds - base_fds) / registered, "base_rss_mb": base_rss, "rss_mb": rss,
                "rss_kb_per_worker": (rss - base_rss) * 1024 / registered, "peak_rss_mb": peak,
                "idle_cpu_pct": idle_cpu * 100, "tasks_per_s": tasks / seconds,
                **{f"cpu_{k}_us_per_task".replace("_all", ""): v / tasks * 1e6 for k, v in task_cpu.items()}}
    finally:
        if stop is not None:
            stop.set()
        block.stop()
        for proc, _ in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


PAYLOAD = 256


# ---- the production server's per-tick worker check, which simulated workers do not exercise ----
def dead_worker_poll_child(sizes: List[int]) -> None:
    """Inside ``dragon -s``: time the Global Services request ``DragonBackend.dead_workers`` makes
    every tick (``multi_join`` with timeout 0 over every live worker's puid) for each size, with
    the list made of a few live processes' puids repeated (Global Services looks at each entry)."""
    from dragon.globalservices.process import kill, multi_join
    from dragon.native.process import Process
    sleepers = [Process(target="/bin/sleep", args=["600"]) for _ in range(4)]
    for proc in sleepers:
        proc.start()
    puids = [proc.puid for proc in sleepers]
    try:
        for size in sizes:
            ids = (puids * (size // len(puids) + 1))[:size]
            times = []
            for _ in range(3):
                start = time.perf_counter()
                multi_join(ids, timeout=0, join_all=False)
                times.append(time.perf_counter() - start)
            print(json.dumps({"puids": size, "seconds": statistics.median(times)}), flush=True)
    finally:
        for puid in puids:
            kill(puid, sig=9)
        multi_join(puids, timeout=10, join_all=True)


def dead_worker_poll(sizes: str) -> List[Dict[str, float]]:
    """Run :func:`dead_worker_poll_child` in a real runtime; one result per size."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    out = subprocess.run([shutil.which("dragon", path=env["PATH"]), "-s", "-t", "tcp", sys.executable,
                          os.path.abspath(__file__), "--dead-worker-poll-child", sizes],
                         env=env, capture_output=True, text=True, timeout=900)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for r in results:
        print(f"multi_join over {r['puids']:,} puids: {r['seconds'] * 1000:.1f} ms", flush=True)
    if not results:
        print(out.stdout[-2000:], out.stderr[-2000:])
    return results


def max_workers(per_node: int) -> int:
    """The most workers the server's own check admits under this machine's hard fd limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fit = (hard - limits.FD_RESERVE) // limits.FDS_PER_WORKER
    return fit // per_node * per_node


def shapes(args) -> List[Tuple[str, int, int]]:
    out = []
    for text in (t for t in args.workers.split(",") if t):
        workers = max_workers(args.per_node) if text == "max" else int(text)
        out.append(("workers", workers, max(1, workers // args.per_node)))
    for nodes in (int(n) for n in args.node_sweep.split(",") if n):
        out.append(("nodes", args.node_sweep_workers, nodes))
    return out


def main() -> None:
    global PAYLOAD
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="100,1000,10000,max")
    parser.add_argument("--per-node", type=int, default=100, help="workers per node in the worker sweep")
    parser.add_argument("--node-sweep", default="1,20,200,2000")
    parser.add_argument("--node-sweep-workers", type=int, default=2000)
    parser.add_argument("--tasks-per-worker", type=float, default=2.0)
    parser.add_argument("--min-tasks", type=int, default=10000)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measurement")
    parser.add_argument("--payload", type=int, default=PAYLOAD, help="bytes of each task and each result")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--window-extra", type=int, default=WINDOW_EXTRA,
                        help="tasks in flight beyond the workers (the executor's prefetch_capacity)")
    parser.add_argument("--lease-threshold", type=int, default=LEASE_THRESHOLD,
                        help="heartbeat_threshold of both ends (period 5 s)")
    parser.add_argument("--json", default=None, help="write every round's figures here")
    parser.add_argument("--plot", default=None, help="directory for the PNGs")
    parser.add_argument("--plot-only", default=None, help="redraw from this JSON file; measure nothing")
    parser.add_argument("--before", default=None,
                        help="a run's JSON to draw beside this one, dashed (e.g. before a change)")
    parser.add_argument("--keep", action="store_true", help="keep the block directories (server.log) under /tmp")
    parser.add_argument("--dead-worker-poll", default=None,
                        help="only time the per-tick Global Services check for these worker counts")
    parser.add_argument("--dead-worker-poll-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dead_worker_poll_child:
        dead_worker_poll_child([int(n) for n in args.dead_worker_poll_child.split(",")])
        return
    before = None
    if args.before:
        with open(args.before) as handle:
            before = json.load(handle)
    if args.plot_only:
        with open(args.plot_only) as handle:
            plot(json.load(handle), args.plot, before)
        return
    # The lock of the Dragon test sessions and the other benchmarks, held until exit: never measure
    # beside another busy-polling runtime.
    lock = open(LOCK_FILE, "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    if args.dead_worker_poll:
        dead_worker_poll(args.dead_worker_poll)
        return
    PAYLOAD = args.payload
    print(f"fd limit: hard {raise_nofile()}", flush=True)
    rounds: List[Dict[str, float]] = []
    tmp = tempfile.mkdtemp(prefix="pd-scale-")
    try:
        for round_ in range(args.repeat):
            for sweep, workers, nodes in shapes(args):
                tasks = max(args.min_tasks, int(workers * args.tasks_per_worker))
                figures = dict(measure(tmp, workers, nodes, args.idle, tasks, args.window_extra,
                                       args.lease_threshold), sweep=sweep, round=round_)
                rounds.append(figures)
                print(json.dumps(figures), flush=True)
                if args.json:
                    with open(args.json, "w") as handle:
                        json.dump(rounds, handle, indent=1)
    finally:
        if args.keep:
            print("block directories kept in", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(rounds)
    if args.plot:
        plot(rounds, args.plot, before)


FIGURES = [("tasks_per_s", "tasks dispatched / s"), ("cpu_us_per_task", "server CPU per task (us)"),
           ("rss_mb", "server RSS, all registered (MB)"), ("register_s", "time to register all workers (s)"),
           ("idle_cpu_pct", "server CPU when idle (% of a core)"), ("fds", "server file descriptors")]


def medians(rounds: List[Dict[str, float]]) -> Dict[Tuple[str, int, int], Dict[str, float]]:
    keyed: Dict[Tuple[str, int, int], List[Dict[str, float]]] = {}
    for r in rounds:
        keyed.setdefault((r["sweep"], int(r["workers"]), int(r["nodes"])), []).append(r)
    return {k: {f: statistics.median(x[f] for x in v) for f in v[0] if f != "sweep"} for k, v in keyed.items()}


def report(rounds: List[Dict[str, float]]) -> None:
    columns = ["tasks_per_s", "cpu_us_per_task", "register_s", "register_cpu_us_per_worker", "idle_cpu_pct",
               "fds", "fds_per_worker", "rss_mb", "rss_kb_per_worker", "peak_rss_mb"]
    print("sweep   workers nodes " + " ".join(f"{c:>12.12s}" for c in columns))
    for (sweep, workers, nodes), m in sorted(medians(rounds).items()):
        print(f"{sweep:7s} {workers:7d} {nodes:5d} " + " ".join(f"{m[c]:12.2f}" for c in columns))


def plot(rounds: List[Dict[str, float]], directory: Optional[str],
         before: Optional[List[Dict[str, float]]] = None) -> None:
    """One PNG per figure: the worker sweep and the node sweep side by side; ``before`` (another run) dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if directory is None:
        return
    os.makedirs(directory, exist_ok=True)
    table = medians(rounds)
    earlier = medians(before) if before else {}
    for field, label in FIGURES:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for ax, sweep in ((axes[0], "workers"), (axes[1], "nodes")):
            points = sorted((k[1] if sweep == "workers" else k[2], m[field]) for k, m in table.items() if k[0] == sweep)
            if points:
                ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label="now" if earlier else None)
            old = sorted((k[1] if sweep == "workers" else k[2], m[field]) for k, m in earlier.items() if k[0] == sweep)
            if old:
                ax.plot([x for x, _ in old], [y for _, y in old], marker="x", linestyle="--", color="tab:red",
                        label="before")
                ax.legend(loc="upper left")
            ax.set_xscale("log")
            counts = sorted({k[1] for k in table if k[0] == "nodes"})
            per_node = sorted({k[1] // k[2] for k in table if k[0] == "workers"})
            ax.set_xlabel(f"workers, {', '.join(map(str, per_node))} per node (sweep 1)" if sweep == "workers" else
                          f"nodes, {', '.join(map(str, counts))} workers in all (sweep 2)")
            if field == "cpu_us_per_task" and points:
                ax.axhline(2 * points[0][1], linestyle="--", color="grey", label=f"2 x at {points[0][0]:,}")
                ax.legend(loc="lower right")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel(label)
        fig.suptitle(f"server scale: {label}")
        fig.tight_layout()
        fig.savefig(os.path.join(directory, f"scale-{field.replace('_', '-')}.png"), dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    main()
