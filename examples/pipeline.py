"""Demo: a small simulation -> training -> analysis pipeline on DragonExecutor.

Four "simulation" bash_apps each write a noisy trajectory of y = 3x + 2 to a
file; a python_app loads each into arrays and *keeps* them in the block
(``keep_result``: they stay in Dragon's distributed dictionary, the driver gets
references, docs/data.md); the "training" step fits a line to all of them, reading
them where they are; an analysis step compares the fit with the truth and writes
a report, which says what was kept and how much of it crossed the driver. Every
step says where it ran (host, process) and how long it took, so you can see that
Python steps run on persistent Dragon workers.

    python examples/pipeline.py [--workdir DIR] [--simulations N]
"""
import argparse
import os
import time

import parsl
from parsl import bash_app, python_app
from parsl.config import Config
from parsl.data_provider.files import File

from parsl_dragon import DragonExecutor, is_kept
from parsl_dragon.task.kept import kept_of


@bash_app
def simulate(seed, points, outputs=(), stdout=None, stderr=None):
    """A stand-in for a simulation code: prints 'x y' lines with noise."""
    return (f"echo \"simulation {seed} on $(hostname) pid $$\"; "
            f"awk -v seed={seed} -v n={points} 'BEGIN {{ srand(seed); "
            f"for (i = 0; i < n; i++) {{ x = i / n * 10; printf \"%f %f\\n\", x, 3*x + 2 + (rand()-0.5) }} }}' "
            f"> {outputs[0]}")


@python_app
def load(trajectory, parsl_resource_specification={"keep_result": True}):
    """Parse one simulation's output into (xs, ys); the result stays in the block."""
    xs, ys = [], []
    with open(trajectory.filepath) as handle:
        for line in handle:
            x, y = map(float, line.split())
            xs.append(x)
            ys.append(y)
    return xs, ys


@python_app
def train(inputs=()):
    """Least-squares fit of y = a x + b over every trajectory (real tuples here, read in the block)."""
    import os
    import socket
    import time
    start = time.time()
    xs, ys = [], []
    for trajectory_xs, trajectory_ys in inputs:
        xs.extend(trajectory_xs)
        ys.extend(trajectory_ys)
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return {"a": a, "b": my - a * mx, "samples": n, "host": socket.gethostname(), "pid": os.getpid(),
            "seconds": time.time() - start}


@python_app
def analyse(model, report_path, kept_note):
    """Compare the fitted model with the truth; write a report."""
    import os
    import socket
    error = abs(model["a"] - 3) + abs(model["b"] - 2)
    with open(report_path, "w") as report:
        report.write(f"fit: y = {model['a']:.3f} x + {model['b']:.3f} from {model['samples']} samples\n")
        report.write(f"absolute error vs truth (3, 2): {error:.4f}\n")
        report.write(kept_note + "\n")
    return {"error": error, "host": socket.gethostname(), "pid": os.getpid()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="demo-output")
    parser.add_argument("--simulations", type=int, default=4)
    parser.add_argument("--points", type=int, default=2000)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    workdir = os.path.abspath(args.workdir)

    started = time.time()
    dfk = parsl.load(Config(executors=[DragonExecutor()], run_dir=os.path.join(workdir, "runinfo"),
                            strategy_period=0.5))
    try:
        sims = [simulate(seed, args.points, outputs=[File(os.path.join(workdir, f"sim-{seed}.dat"))],
                         stdout=os.path.join(workdir, f"sim-{seed}.out"))
                for seed in range(args.simulations)]
        trajectories = [load(s.outputs[0]).result() for s in sims]
        kept = [kept_of(t) for t in trajectories if is_kept(t)]
        kept_note = (f"simulation results kept in the block (Dragon DDict): {len(kept)} of {len(trajectories)}, "
                     f"{sum(k.nbytes for k in kept)} bytes, read by the training task where they are")
        model = train(inputs=trajectories).result()
        kept_note += f" ({dfk.executors['dragon'].kept_bytes_read} bytes of kept results were read in the driver)"
        result = analyse(model, os.path.join(workdir, "report.txt"), kept_note).result()
        finished = time.time()
        for seed in range(args.simulations):
            with open(os.path.join(workdir, f"sim-{seed}.out")) as handle:
                print(f"  {handle.read().strip()}")
        print(f"  training on {model['host']} pid {model['pid']}: {model['samples']} samples "
              f"in {model['seconds'] * 1000:.1f} ms -> y = {model['a']:.3f} x + {model['b']:.3f}")
        print(f"  {kept_note}")
        print(f"  analysis on {result['host']} pid {result['pid']}: error {result['error']:.4f}")
        print(f"pipeline finished in {finished - started:.1f} s (including Dragon start-up); "
              f"report: {os.path.join(workdir, 'report.txt')}")
        if result["error"] > 0.1:
            raise SystemExit(f"fit error {result['error']:.3f} is too large")
        if len(kept) != len(trajectories):
            raise SystemExit("the simulation results were not kept in the block (the log says why)")
    finally:
        dfk.cleanup()
        parsl.clear()


if __name__ == "__main__":
    main()
