"""DragonLauncher's generated text, check_launcher's verdicts, the site configs' job scripts and
boot's side of the launch (one boot per block, the address it publishes). No batch system, no Dragon.

Like dask-jobqueue's job-script tests: the full job script Parsl's providers would submit
is rendered (their ``execute_wait`` is replaced, so no sbatch/qsub runs) and read as text;
the launcher's fragment is also run through bash to check what ``exec`` promises.
"""
from __future__ import annotations

import glob
import importlib.util
import logging
import os
import subprocess

import pytest
from parsl.launchers import (
    AprunLauncher,
    GnuParallelLauncher,
    JsrunLauncher,
    MpiExecLauncher,
    MpiRunLauncher,
    SimpleLauncher,
    SingleNodeLauncher,
    SrunLauncher,
    SrunMPILauncher,
    WrappedLauncher,
)
from parsl.providers import PBSProProvider, SlurmProvider
from typeguard import TypeCheckError

from parsl_dragon.core.accelerators import parse_accelerators
from parsl_dragon.driver.launchers import DragonLauncher, check_launcher, default_launcher
from parsl_dragon.errors import ConfigurationError
from parsl_dragon.server import address, boot, bootdir
from parsl_dragon.vocabulary import ENV_NODES_PER_BLOCK

BOOT = "/venv/bin/python -m parsl_dragon.server.boot --block-dir /run/block-0 --transport auto -- --block-id 0"


# ---------------------------------------------------------------- the fragment

def test_runs_the_command_once_with_exec():
    text = DragonLauncher()(BOOT, 1, 4)
    lines = text.splitlines()
    assert lines[-1] == f"exec {BOOT}"
    assert text.count(BOOT) == 1
    assert f"export {ENV_NODES_PER_BLOCK}=4" in lines
    code = [line for line in lines if not line.startswith("#")]
    for per_node in ("srun", "mpiexec", "mpirun", "aprun", "jsrun", "parallel", "for ", "&", "wait"):
        assert not any(per_node in line for line in code[:-1]), per_node


def test_fragment_is_valid_bash_and_ends_with_a_newline():
    text = DragonLauncher()(BOOT, 1, 2)
    assert text.endswith("\n")
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


@pytest.mark.parametrize("nodes, noun", [(1, "1 node)"), (3, "3 nodes)")])
def test_comment_names_the_block_size(nodes, noun):
    assert noun in DragonLauncher()(BOOT, 1, nodes).splitlines()[0]


def test_debug_echo_only_when_debug():
    assert any(line.startswith("echo ") for line in DragonLauncher(debug=True)(BOOT, 1, 2).splitlines())
    assert not any(line.startswith("echo ") for line in DragonLauncher(debug=False)(BOOT, 1, 2).splitlines())


def test_prepend_goes_between_exec_and_the_command():
    text = DragonLauncher(prepend="  apptainer exec img.sif ")(BOOT, 1, 1)
    assert text.splitlines()[-1] == f"exec apptainer exec img.sif {BOOT}"
    assert DragonLauncher(prepend="   ")(BOOT, 1, 1).splitlines()[-1] == f"exec {BOOT}"


def test_tasks_per_node_other_than_one_is_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.driver.launchers"):
        text = DragonLauncher()(BOOT, 8, 2)
    assert text.count(BOOT) == 1
    assert "tasks_per_node=8 is ignored" in caplog.text


def test_exec_replaces_the_job_shell_and_passes_the_exit_code():
    command = "sh -c 'echo $$ $" + ENV_NODES_PER_BLOCK + "; exit 7'"
    script = "echo $$\n" + DragonLauncher(debug=False)(command, 1, 2)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert done.returncode == 7
    shell_pid, (command_pid, nodes) = done.stdout.split()[0], done.stdout.split()[1:]
    assert command_pid == shell_pid, "the command took over the job shell's pid: signals reach it"
    assert nodes == "2"


def test_repr_and_defaults():
    launcher = DragonLauncher(prepend="env X=1")
    assert "DragonLauncher" in repr(launcher) and "env X=1" in repr(launcher)
    assert launcher.debug is True
    assert isinstance(default_launcher(), DragonLauncher)


def test_typechecked_arguments():
    with pytest.raises(TypeCheckError):
        DragonLauncher(prepend=3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- whole job scripts

@pytest.fixture
def rendered(monkeypatch, tmp_path):
    """Submit through a Parsl provider without a batch system; return the job script's text."""
    def render(provider_class, answer, **kwargs):
        commands = []

        def fake_execute_wait(self, cmd, timeout=None):
            commands.append(cmd)
            return (0, answer, "") if cmd.split()[0] in ("sbatch", "qsub") else (1, "", "no accounting")

        monkeypatch.setattr(provider_class, "execute_wait", fake_execute_wait)
        provider = provider_class(launcher=DragonLauncher(), **kwargs)
        provider.script_dir = str(tmp_path)
        job_id = provider.submit(BOOT, 1)
        script = commands[-1].split()[-1]
        return job_id, open(script).read()
    return render


def test_slurm_job_script(rendered):
    job_id, text = rendered(SlurmProvider, "Submitted batch job 42", partition="debug", nodes_per_block=2,
                            walltime="00:30:00", worker_init="module load python; source /env/bin/activate")
    assert job_id == "42"
    assert "#SBATCH --nodes=2" in text and "#SBATCH --partition=debug" in text and "#SBATCH --time=30" in text
    init, launch = text.index("module load python"), text.index(f"exec {BOOT}")
    assert init < launch, "worker_init runs before the block starts"
    assert text.count(BOOT) == 1 and "srun" not in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_pbspro_job_script(rendered):
    job_id, text = rendered(PBSProProvider, "42.fakepbs\n", queue="debug", account="PROJ", nodes_per_block=2,
                            cpus_per_node=64, walltime="01:00:00", worker_init="module use /soft/modulefiles")
    assert job_id == "42.fakepbs"
    assert "#PBS -l select=2:ncpus=64" in text and "#PBS -l walltime=01:00:00" in text
    assert text.index("module use /soft/modulefiles") < text.index(f"exec {BOOT}")
    assert text.count(BOOT) == 1 and "mpiexec" not in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


# ---------------------------------------------------------------- check_launcher

@pytest.mark.parametrize("launcher_class", [AprunLauncher, GnuParallelLauncher, JsrunLauncher, MpiExecLauncher,
                                            MpiRunLauncher, SrunLauncher, SrunMPILauncher])
def test_per_node_launchers_are_refused(launcher_class):
    with pytest.raises(ConfigurationError) as info:
        check_launcher(launcher_class())
    message = str(info.value)
    assert launcher_class.__name__ in message and "DragonLauncher" in message
    assert "exactly one Dragon runtime" in message


@pytest.mark.parametrize("launcher", [None, DragonLauncher(), SimpleLauncher(), WrappedLauncher("time")])
@pytest.mark.parametrize("nodes", [None, 1, 4])
def test_run_once_launchers_are_accepted(launcher, nodes):
    check_launcher(launcher, nodes)


def test_single_node_launcher_only_for_one_node_blocks():
    check_launcher(SingleNodeLauncher())
    check_launcher(SingleNodeLauncher(), 1)
    with pytest.raises(ConfigurationError, match="SingleNodeLauncher.*2 copies.*DragonLauncher"):
        check_launcher(SingleNodeLauncher(), 2)


# ---------------------------------------------------------------- site configs (configs/slurm_*, pbs_*)

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
SITE_CONFIGS = sorted(glob.glob(os.path.join(CONFIGS, "slurm_*.py")) + glob.glob(os.path.join(CONFIGS, "pbs_*.py")))


def _load_config_module(path):
    spec = importlib.util.spec_from_file_location(f"site_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_four_site_configs_exist():
    assert [os.path.basename(p) for p in SITE_CONFIGS] == [
        "pbs_aurora.py", "pbs_polaris.py", "slurm_frontier.py", "slurm_perlmutter.py"]


@pytest.mark.parametrize("path", SITE_CONFIGS, ids=os.path.basename)
def test_site_config_renders_a_one_runtime_job_script(path, monkeypatch, tmp_path):
    monkeypatch.setenv("PARSL_DRAGON_ACCOUNT", "proj42")
    monkeypatch.setenv("PARSL_DRAGON_VENV", "/sw/venv")
    submitted = []

    def fake_execute_wait(self, cmd, timeout=None):
        submitted.append(cmd)
        return (0, "Submitted batch job 7" if cmd.startswith("sbatch") else "7.pbs", "") \
            if cmd.split()[0] in ("sbatch", "qsub") else (1, "", "")

    monkeypatch.setattr(SlurmProvider, "execute_wait", fake_execute_wait)
    monkeypatch.setattr(PBSProProvider, "execute_wait", fake_execute_wait)
    first, second = _load_config_module(path).fresh_config(), _load_config_module(path).fresh_config()
    assert first is not second and first.executors[0] is not second.executors[0]
    (executor,) = first.executors
    provider = executor.provider
    assert isinstance(provider.launcher, DragonLauncher)
    check_launcher(provider.launcher, provider.nodes_per_block)
    assert executor.transport in ("hsta", "tcp", "auto") and executor.workers_per_node_arg >= 1
    provider.script_dir = str(tmp_path)
    provider.submit(BOOT, 1)
    text = open(submitted[-1].split()[-1]).read()
    assert "proj42" in text or "-A proj42" in submitted[-1], "the account comes from PARSL_DRAGON_ACCOUNT"
    assert "source /sw/venv/bin/activate" in text
    assert text.count(BOOT) == 1 and text.index("/sw/venv") < text.index(f"exec {BOOT}")
    assert f"export {ENV_NODES_PER_BLOCK}={provider.nodes_per_block}" in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_site_configs_name_their_nodes_gpus(monkeypatch):
    """Aurora's 12 tiles, Frontier's 8 GCDs, Polaris's and Perlmutter's 4 A100s; Perlmutter's CPU nodes none."""
    monkeypatch.delenv("PARSL_DRAGON_NODE_TYPE", raising=False)
    found = {}
    for path in SITE_CONFIGS:
        (executor,) = _load_config_module(path).fresh_config().executors
        found[os.path.basename(path)] = parse_accelerators(executor.available_accelerators, "x")
    aurora = found["pbs_aurora.py"]
    assert len(aurora) == 12 and aurora[:2] == ("0.0", "0.1") and aurora[-1] == "5.1"
    assert len(set(aurora)) == 12, "each tile is its own device"
    assert found["slurm_frontier.py"] == tuple(str(i) for i in range(8))
    assert found["pbs_polaris.py"] == ("0", "1", "2", "3")
    assert found["slurm_perlmutter.py"] == ("0", "1", "2", "3"), "GPU nodes by default"
    monkeypatch.setenv("PARSL_DRAGON_NODE_TYPE", "cpu")
    cpu = _load_config_module(os.path.join(CONFIGS, "slurm_perlmutter.py")).fresh_config()
    (executor,) = cpu.executors
    assert executor.available_accelerators is None and executor.provider.constraint == "cpu"


# ---------------------------------------------------------------- boot's side: one boot per block, its address

def test_a_second_boot_of_the_same_block_exits(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)  # main() configures logging
    held = bootdir.take_block_lock(str(tmp_path))
    assert held is not None
    try:
        assert bootdir.take_block_lock(str(tmp_path)) is None
        code = boot.main(["--block-dir", str(tmp_path), "--transport", "tcp", "--", "--block-id", "0"])
        assert code == boot.DUPLICATE_EXIT
        assert "another boot of this block already runs" in capsys.readouterr().err
    finally:
        held.close()
    again = bootdir.take_block_lock(str(tmp_path))
    assert again is not None, "the lock is free once its holder is gone"
    again.close()


def test_block_size_mismatch_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.server.boot"):
        boot.check_block_size({ENV_NODES_PER_BLOCK: "2", "PBS_JOBID": "1", "SLURM_JOB_ID": "5",
                               "SLURM_JOB_NUM_NODES": "1"})
    assert "asked for 2 nodes but the allocation has 1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.server.boot"):
        boot.check_block_size({ENV_NODES_PER_BLOCK: "2", "SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "2"})
        boot.check_block_size({ENV_NODES_PER_BLOCK: "4"})  # outside an allocation: nothing to compare
    assert not caplog.records


@pytest.fixture
def network(monkeypatch):
    """Fake name resolution and interfaces for address.host_address."""
    def setup(names, interfaces):
        monkeypatch.setattr(address.socket, "getfqdn", lambda: "node.example")
        monkeypatch.setattr(address.socket, "gethostname", lambda: "node")
        monkeypatch.setattr(address, "_resolve", lambda name: names.get(name))
        monkeypatch.setattr(address, "_interface_names", lambda: list(interfaces))
        monkeypatch.setattr(address, "interface_address", lambda name: interfaces.get(name))
    return setup


def test_auto_uses_the_resolved_host_name(network):
    network({"node.example": "10.1.2.3"}, {"lo": "127.0.0.1", "eth0": "192.168.0.5"})
    assert address.host_address("auto") == "10.1.2.3"


def test_auto_skips_debians_loopback_host_entry_for_an_interface(network):
    network({"node.example": "127.0.1.1", "node": "127.0.1.1"},
            {"lo": "127.0.0.1", "down0": None, "hsn0": "10.100.0.7"})
    assert address.host_address("auto") == "10.100.0.7"


def test_auto_falls_back_to_loopback_with_a_warning(network, caplog):
    network({}, {"lo": "127.0.0.1"})
    with caplog.at_level(logging.WARNING, logger="parsl_dragon.server.address"):
        assert address.host_address("auto") == "127.0.0.1"
    assert "only clients on this host" in caplog.text


def test_interface_names_and_explicit_addresses(network):
    network({}, {"lo": "127.0.0.1", "hsn0": "10.100.0.7"})
    assert address.host_address("hsn0") == "10.100.0.7"
    assert address.host_address("10.9.9.9") == "10.9.9.9"
    assert address.host_address("login01.example") == "login01.example"


def test_boot_passes_the_host_address_through_for_the_server_to_resolve(tmp_path, monkeypatch):
    """Dragon may start the server on another node than boot's: boot must not resolve it."""
    started = []

    class RecordingBoot:
        def __init__(self, command, *args, **kwargs):
            started.append(command)

        def run(self):
            return 0

    monkeypatch.setattr(boot, "Boot", RecordingBoot)
    monkeypatch.setattr(boot, "dragon_command", lambda transport, env, server_args: ["dragon", *server_args])
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)
    assert boot.main(["--block-dir", str(tmp_path), "--transport", "tcp", "--", "--host-address", "auto"]) == 0
    assert started[0][1:3] == ["--host-address", "auto"]


def test_server_resolves_and_logs_its_address(network, caplog):
    from parsl_dragon.server import main
    network({"node.example": "10.1.2.3"}, {})
    with caplog.at_level(logging.INFO, logger="parsl_dragon.server"):
        assert main.resolve_host_address("auto") == "10.1.2.3"
    assert "Server address: 10.1.2.3 (from --host-address auto) on node" in caplog.text


def test_real_interfaces_of_this_host():
    assert address.interface_address("lo") == "127.0.0.1"
    assert address.interface_address("no-such-if0") is None
    assert not address.host_address("auto").startswith("127.") or not [
        n for n in address._interface_names() if n != "lo" and address.interface_address(n)]
