"""The demo pipeline (``examples/pipeline.py``, what ``scripts/demo.sh`` runs), end to end.

It keeps its simulation results in the block and its report says so; nothing of them is read
in the driver. Run as a user runs it, in a process of its own.
"""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_demo_pipeline_keeps_its_simulation_results_and_reports_it(no_leaks, tmp_path):
    workdir = tmp_path / "demo"
    done = subprocess.run([sys.executable, os.path.join(REPO, "examples", "pipeline.py"), "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = (workdir / "report.txt").read_text()
    assert "absolute error vs truth" in report
    assert "simulation results kept in the block (Dragon DDict): 4 of 4" in report
    assert "(0 bytes of kept results were read in the driver)" in report
    assert not [name for name in os.listdir(tmp_path) if name.startswith("ddict_orc_")], "nothing left in the cwd"
