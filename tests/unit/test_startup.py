"""Cold start: the block's start-up timeline (host/startup.py), the blocks' notes of it, the
executor launching its initial blocks in start(), and a package import that stays light."""
import json
import os
import subprocess
import sys
import time

import parsl_dragon
from parsl_dragon.driver.blocks import BlockLaunch, BlockWatch
from parsl_dragon.driver.executor import DragonExecutor
from parsl_dragon.host import startup


def test_process_started_is_a_process_start_in_wall_clock():
    before = time.time()
    child = subprocess.Popen(["sleep", "5"])
    try:
        started = startup.process_started(child.pid)
        assert started is not None and before - 0.5 < started <= time.time() + 0.05  # 10 ms clock ticks
    finally:
        child.kill()
        child.wait()
    assert startup.process_started() <= time.time()  # this process, however long it has run
    assert startup.process_started(2 ** 22 + 12345) is None  # no such process


def test_notes_are_read_back_first_time_wins_and_junk_is_skipped(tmp_path):
    startup.note(str(tmp_path), startup.BOOT_STARTED, at=10.0)
    startup.note(str(tmp_path), startup.BOOT_STARTED, at=11.0)  # a second attempt: the first counts
    startup.note(str(tmp_path), startup.RUNTIME_LAUNCHED, at=12.5)
    with open(tmp_path / startup.STARTUP_FILE, "a") as handle:
        handle.write("not json\n" + json.dumps({"milestone": "unknown", "at": 1}) + "\n"
                     + json.dumps({"milestone": startup.WELCOME, "at": "x"}) + "\n")
    assert startup.read_notes(str(tmp_path)) == {startup.BOOT_STARTED: 10.0, startup.RUNTIME_LAUNCHED: 12.5}
    assert os.stat(tmp_path / startup.STARTUP_FILE).st_mode & 0o777 == 0o600


def test_noting_never_fails_the_block(tmp_path):
    startup.note(str(tmp_path / "missing"), startup.BOOT_STARTED)  # no directory: left out
    startup.note_process_start(str(tmp_path), startup.SERVER_STARTED)
    assert startup.read_notes(str(tmp_path / "missing")) == {}
    assert set(startup.read_notes(str(tmp_path))) == {startup.SERVER_STARTED}


def test_the_timeline_merges_block_and_driver_notes_in_milestone_order(tmp_path):
    startup.note(str(tmp_path), startup.SERVER_STARTED, at=103.0)
    line = startup.timeline("0", str(tmp_path), {startup.WELCOME: 105.0, startup.BLOCK_SUBMITTED: 100.0})
    assert line.since(100.0) == [(startup.BLOCK_SUBMITTED, 0.0), (startup.SERVER_STARTED, 3.0),
                                 (startup.WELCOME, 5.0)]
    assert line.span(startup.SERVER_STARTED, startup.WELCOME) == 2.0
    assert line.span(startup.SERVER_STARTED, startup.FIRST_RESULT) is None


def test_the_watch_notes_the_driver_milestones_of_a_launch(tmp_path):
    watch = BlockWatch(None, connect=None, on_server=None, on_failed=None, cancelled=lambda: False)
    launch = watch.launches["0"] = BlockLaunch("0", str(tmp_path), str(tmp_path / "c.json"), launched=50.0)
    launch.note(startup.BLOCK_SUBMITTED, at=50.0)
    launch.note(startup.WELCOME, at=52.0)
    watch._by_server["s1"] = launch
    watch.results_from("s1")
    watch.results_from("s1")  # only the first results count
    noted = watch.timeline("0").at
    assert noted[startup.WELCOME] == 52.0 and noted[startup.FIRST_RESULT] >= 52.0
    assert "s1" not in watch._by_server


def test_the_strategy_first_pass_does_not_launch_again_what_start_launched(monkeypatch):
    from parsl.executors.status_handling import BlockProviderExecutor

    launched = []
    monkeypatch.setattr(BlockProviderExecutor, "scale_out_facade",
                        lambda self, n: launched.append(n) or [str(i) for i in range(n)])
    executor = DragonExecutor()
    executor._early_blocks = BlockProviderExecutor.scale_out_facade(executor, 1)  # what start() does
    assert executor.scale_out_facade(1) == [] and launched == [1]  # the strategy's init_blocks pass
    executor.scale_out_facade(2)  # later scaling goes through
    assert launched == [1, 2]


def test_importing_the_package_imports_neither_parsl_nor_the_executor():
    code = ("import sys, parsl_dragon; assert 'parsl' not in sys.modules, 'parsl imported'; "
            "assert 'parsl_dragon.driver.executor' not in sys.modules; "
            "from parsl_dragon import DragonExecutor, ServerLost, DragonRadio; print(DragonExecutor.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "DragonExecutor"


def test_every_public_name_resolves_and_unknown_names_do_not():
    for name in parsl_dragon.__all__:
        assert getattr(parsl_dragon, name).__name__ == name
    assert "DragonExecutor" in dir(parsl_dragon)
    try:
        parsl_dragon.NoSuchThing
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")
