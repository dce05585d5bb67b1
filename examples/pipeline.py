"""Demo: a small simulation -> training -> analysis pipeline on DragonExecutor.

Four "simulation" bash_apps each write a noisy trajectory of y = 3x + 2 to a
file; a python_app "training" step fits a line to all of them; an analysis
step compares the fit with the truth and writes a report. Every step says
where it ran (host, process) and how long it took, so you can see that Python
steps run on persistent Dragon workers.

    python examples/pipeline.py [--workdir DIR] [--simulations N]
"""
import argparse
import os
import time

import parsl
from parsl import bash_app, python_app
from parsl.config import Config
from parsl.data_provider.files import File

from parsl_dragon import DragonExecutor


@bash_app
def simulate(seed, points, outputs=(), stdout=None, stderr=None):
    """A stand-in for a simulation code: prints 'x y' lines with noise."""
    return (f"echo \"simulation {seed} on $(hostname) pid $$\"; "
            f"awk -v seed={seed} -v n={points} 'BEGIN {{ srand(seed); "
            f"for (i = 0; i < n; i++) {{ x = i / n * 10; printf \"%f %f\\n\", x, 3*x + 2 + (rand()-0.5) }} }}' "
            f"> {outputs[0]}")


@python_app
def train(inputs=()):
    """Least-squares fit of y = a x + b over every simulation output."""
    import os
    import socket
    import time
    start = time.time()
    xs, ys = [], []
    for f in inputs:
        with open(f.filepath) as handle:
            for line in handle:
                x, y = map(float, line.split())
                xs.append(x)
                ys.append(y)
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return {"a": a, "b": my - a * mx, "samples": n, "host": socket.gethostname(), "pid": os.getpid(),
            "seconds": time.time() - start}


@python_app
def analyse(model, report_path):
    """Compare the fitted model with the truth; write a report."""
    import os
    import socket
    error = abs(model["a"] - 3) + abs(model["b"] - 2)
    with open(report_path, "w") as report:
        report.write(f"fit: y = {model['a']:.3f} x + {model['b']:.3f} from {model['samples']} samples\n")
        report.write(f"absolute error vs truth (3, 2): {error:.4f}\n")
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
        model_future = train(inputs=[s.outputs[0] for s in sims])
        result = analyse(model_future, os.path.join(workdir, "report.txt")).result()
        model = model_future.result()
        finished = time.time()
        for seed in range(args.simulations):
            with open(os.path.join(workdir, f"sim-{seed}.out")) as handle:
                print(f"  {handle.read().strip()}")
        print(f"  training on {model['host']} pid {model['pid']}: {model['samples']} samples "
              f"in {model['seconds'] * 1000:.1f} ms -> y = {model['a']:.3f} x + {model['b']:.3f}")
        print(f"  analysis on {result['host']} pid {result['pid']}: error {result['error']:.4f}")
        print(f"pipeline finished in {finished - started:.1f} s (including Dragon start-up); "
              f"report: {os.path.join(workdir, 'report.txt')}")
        if result["error"] > 0.1:
            raise SystemExit(f"fit error {result['error']:.3f} is too large")
    finally:
        dfk.cleanup()
        parsl.clear()


if __name__ == "__main__":
    main()
