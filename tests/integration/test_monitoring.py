"""Parsl monitoring through DragonExecutor: task and try rows reach the database."""
import sqlite3

import parsl
from parsl import python_app
from parsl.config import Config
from parsl.monitoring import MonitoringHub

from parsl_dragon import DragonExecutor


@python_app
def slow_double(x):
    import time
    time.sleep(1.5)
    return 2 * x


def test_monitoring_database_has_tasks_tries_and_resources(no_leaks, tmp_path):
    db = tmp_path / "monitoring.db"
    config = Config(
        executors=[DragonExecutor(workers_per_node=1, heartbeat_period=1.0)],
        monitoring=MonitoringHub(logging_endpoint=f"sqlite:///{db}", resource_monitoring_interval=0.3),
        run_dir=str(tmp_path / "runinfo"), strategy_period=0.2)
    dfk = parsl.load(config)
    try:
        assert [slow_double(i).result(timeout=120) for i in range(3)] == [0, 2, 4]
    finally:
        dfk.cleanup()
        parsl.clear()

    with sqlite3.connect(db) as conn:
        tasks = conn.execute("SELECT task_id, task_func_name FROM task").fetchall()
        tries = conn.execute("SELECT task_id, task_executor, block_id, task_try_time_running FROM try").fetchall()
        resources = conn.execute("SELECT COUNT(*) FROM resource").fetchone()[0]
    assert sorted(t[0] for t in tasks) == [0, 1, 2] and {t[1] for t in tasks} == {"slow_double"}
    assert sorted(t[0] for t in tries) == [0, 1, 2]
    assert {(t[1], t[2]) for t in tries} == {("dragon", "0")}, "executor label and block id of every try"
    assert all(t[3] is not None for t in tries), "running time comes from the worker's radio"
    assert resources > 0, "resource records come from the worker's resource monitor"
