"""The server's command line (server/main.py): flags become ServerOptions."""
import os

import pytest

from parsl_dragon.server import main
from parsl_dragon.wire import security


def options(tmp_path, *extra):
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    security.load_pair(str(keys), security.CLIENT)
    security.load_pair(str(keys), security.SERVER)
    args = main.build_parser().parse_args(["--connection-file", str(tmp_path / "c.json"), "--log-file",
                                           str(tmp_path / "s.log"), "--key-dir", str(keys), *extra])
    return main.options_from(args)


def test_rank_startup_timeout_defaults_to_the_settings_default(tmp_path):
    assert options(tmp_path).rank_startup_timeout_ms == 60_000


def test_rank_startup_timeout_flag_and_forever(tmp_path):
    assert options(tmp_path, "--rank-startup-timeout-ms", "900").rank_startup_timeout_ms == 900
    os.rename(tmp_path / "keys", tmp_path / "old-keys")
    assert options(tmp_path, "--rank-startup-timeout-ms", "-1").rank_startup_timeout_ms == -1


def test_job_id_comes_from_the_allocation_unless_given(tmp_path, monkeypatch):
    monkeypatch.delenv("PBS_JOBID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert options(tmp_path).job_id == "4242"
    os.rename(tmp_path / "keys", tmp_path / "old-keys")
    assert options(tmp_path, "--job-id", "7").job_id == "7"
    assert main.batch_job_id({"PBS_JOBID": "12.pbs"}) == "12.pbs"
    assert main.batch_job_id({}) is None


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "soon"])
def test_a_timeout_flag_refuses_what_the_executor_refuses(tmp_path, value, capsys):
    """The server's timeout flags use the project's one parser: > 0 ms or -1, nothing else."""
    with pytest.raises(SystemExit):
        options(tmp_path, "--owner-timeout-ms", value)
    assert "--owner-timeout-ms" in capsys.readouterr().err


def test_accelerators_flag_sets_the_slot_tables_gpu_count(tmp_path, capsys):
    opts = options(tmp_path, "--accelerators", "0.0,0.1,1.0")
    assert opts.accelerators == ("0.0", "0.1", "1.0") and opts.gpus_of(4) == 3
    (tmp_path / "none").mkdir()
    none = options(tmp_path / "none", "--accelerators", "")
    assert none.accelerators == () and none.gpus_of(4) == 0
    (tmp_path / "default").mkdir()
    default = options(tmp_path / "default")
    assert default.accelerators is None and default.gpus_of(4) == 4, "Dragon's count"
    with pytest.raises(SystemExit):
        main.build_parser().parse_args(["--connection-file", "c", "--log-file", "l", "--key-dir", "k",
                                        "--accelerators", "0,bad id"])
    assert "no commas or spaces" in capsys.readouterr().err
