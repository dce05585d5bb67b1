"""Which PMI backends can launch ranks on this node (server/pmi.py): every backend, with the
node's signs (mpiexec on PATH, Cray PMI libraries and variables, libpmix) faked per test."""
import os
import stat

import pytest

from parsl_dragon.server import pmi
from parsl_dragon.vocabulary import PMI_BACKENDS


@pytest.fixture
def bare_node(monkeypatch):
    """A node with no Cray PMI files and no PMI/PMIx libraries; returns the library names looked up."""
    looked_up = []

    def find_library(name):
        looked_up.append(name)
        return None
    monkeypatch.setattr(pmi.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pmi.ctypes.util, "find_library", find_library)
    return looked_up


def mpiexec_dir(tmp_path, executable=True):
    """A directory holding a stub ``mpiexec`` (executable or not)."""
    path = tmp_path / "mpiexec"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(stat.S_IRWXU if executable else stat.S_IRUSR | stat.S_IWUSR)
    return str(tmp_path)


@pytest.mark.parametrize("backend", PMI_BACKENDS)
def test_on_a_bare_node_each_backend_works_or_names_itself_and_what_to_use_instead(bare_node, tmp_path, backend):
    why = pmi.problem(backend, {"PATH": str(tmp_path)})  # no mpiexec, no Cray PMI, no libpmix
    if backend == "none":
        assert why is None
        return
    assert why.startswith(f"pmi='{backend}' needs ")
    assert [b for b in PMI_BACKENDS if b != backend and f"pmi='{b}'" in why], why


@pytest.mark.parametrize("backend", ["mpich", "PMIX", "", "slurm"])
def test_an_unknown_backend_is_named_with_the_choices(backend):
    why = pmi.problem(backend, {})
    assert why.startswith(f"unknown PMI backend {backend!r}")
    assert "cray, pmix, mpiexec, none" in why


def test_none_works_on_any_node(bare_node):
    assert pmi.problem("none", {}) is None


def test_mpiexec_works_when_an_executable_mpiexec_is_on_the_path(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    assert pmi.problem("mpiexec", {"PATH": f"{other}{os.pathsep}{mpiexec_dir(tmp_path)}"}) is None


@pytest.mark.parametrize("executable", [False, None], ids=["not-executable", "absent"])
def test_mpiexec_without_one_on_the_path_names_the_backend_and_the_alternatives(tmp_path, executable):
    path = str(tmp_path) if executable is None else mpiexec_dir(tmp_path, executable=False)
    why = pmi.problem("mpiexec", {"PATH": path})
    assert why.startswith("pmi='mpiexec' needs an mpiexec on PATH")
    assert "pmi='none'" in why and "pmi='cray'" in why


def test_mpiexec_looks_at_the_given_environment_not_ours(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", mpiexec_dir(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert pmi.problem("mpiexec", {"PATH": str(empty)}) is not None
    assert pmi.problem("mpiexec") is None  # no env given: this process's environment


def test_cray_without_cray_pmi_names_the_backend_and_the_alternatives(bare_node):
    why = pmi.problem("cray", {"PALS_APID": "1234"})  # PALS alone, without a PMI library
    assert why.startswith("pmi='cray' needs Cray PMI")
    assert "pmi='mpiexec'" in why and "pmi='none'" in why


def test_cray_works_where_the_cray_pmi_module_is_loaded(bare_node):
    assert pmi.problem("cray", {"CRAY_PMI_INCLUDE_OPTS": "-I/opt/cray/pe/pmi/6.1/include"}) is None
    assert pmi.problem("cray", {"CRAY_PMI_INCLUDE_OPTS": ""}) is not None


def test_cray_works_where_the_cray_pmi_library_is_installed(monkeypatch, bare_node):
    seen = []

    def glob(pattern):
        seen.append(pattern)
        return ["/opt/cray/pe/pmi/6.1.13/lib/libpmi2.so.0"] if pattern.startswith("/opt/cray/pe/pmi/") else []
    monkeypatch.setattr(pmi.glob, "glob", glob)
    assert pmi.problem("cray", {}) is None
    assert seen and all(pattern.startswith("/opt/cray/pe/") for pattern in seen)


@pytest.mark.parametrize("library", ["pmi2", "pmi"])
def test_cray_works_with_a_pmi_library_inside_a_pals_job_only(monkeypatch, bare_node, library):
    monkeypatch.setattr(pmi.ctypes.util, "find_library", lambda name: f"lib{name}.so.0" if name == library else None)
    assert pmi.problem("cray", {"PALS_APID": "1234"}) is None
    assert pmi.problem("cray", {}) is not None  # a PMI library outside PALS: not Cray's


def test_pmix_without_libpmix_names_the_backend_and_the_alternatives(bare_node):
    why = pmi.problem("pmix", {})
    assert "pmix" in bare_node
    assert why.startswith("pmi='pmix' needs a PMIx library")
    assert "pmi='mpiexec'" in why and "pmi='none'" in why


def test_pmix_works_where_libpmix_is_found(monkeypatch):
    monkeypatch.setattr(pmi.ctypes.util, "find_library", lambda name: "libpmix.so.2" if name == "pmix" else None)
    assert pmi.problem("pmix", {}) is None
