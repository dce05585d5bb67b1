"""Unit tests for parsl_dragon.core.spec: spec validation, derived values, fit checks."""
from __future__ import annotations

import copy
import json
import logging

import pytest
from parsl.executors.errors import InvalidResourceSpecification

from parsl_dragon.core import spec as resources
from parsl_dragon.core.placement import NodeSlots, Request
from parsl_dragon.core.spec import check_fits, check_pmi, is_mpi, normalize_spec, request_for
from parsl_dragon.vocabulary import DEFAULT_PMI


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """Each test sees the 'warned once' memory empty."""
    monkeypatch.setattr(resources, "_warned", set())


def _keys(exc_info) -> set:
    return set(exc_info.value.invalid_keys)


# ---------------------------------------------------------------- valid specs

MPI = {"pmi": DEFAULT_PMI}  # the executor's default, applied to MPI tasks without a "pmi" key

VALID = [
    ({}, {}),
    (None, {}),
    # HTEX keys: derived values as integers, computed like validate_resource_spec
    ({"num_nodes": 2, "ranks_per_node": 3}, {"num_nodes": 2, "ranks_per_node": 3, "num_ranks": 6, **MPI}),
    ({"num_nodes": 2, "num_ranks": 8}, {"num_nodes": 2, "ranks_per_node": 4, "num_ranks": 8, **MPI}),
    ({"num_nodes": 3, "ranks_per_node": 2, "num_ranks": 6},
     {"num_nodes": 3, "ranks_per_node": 2, "num_ranks": 6, **MPI}),
    ({"num_nodes": 4}, {"num_nodes": 4, "ranks_per_node": 1, "num_ranks": 4, **MPI}),
    ({"ranks_per_node": 5}, {"num_nodes": 1, "ranks_per_node": 5, "num_ranks": 5, **MPI}),
    ({"num_ranks": 7}, {"num_nodes": 1, "ranks_per_node": 7, "num_ranks": 7, **MPI}),
    ({"ranks_per_node": 4, "num_ranks": 12}, {"num_nodes": 3, "ranks_per_node": 4, "num_ranks": 12, **MPI}),
    ({"launcher_options": "--cpu-bind=none"},
     {"launcher_options": "--cpu-bind=none", "num_nodes": 1, "ranks_per_node": 1, "num_ranks": 1, **MPI}),
    # HTEX accepts its integers as strings; we return ints
    ({"num_nodes": "2", "ranks_per_node": " 4 "}, {"num_nodes": 2, "ranks_per_node": 4, "num_ranks": 8, **MPI}),
    # our keys
    ({"pmi": "cray"}, {"pmi": "cray", "num_nodes": 1, "ranks_per_node": 1, "num_ranks": 1}),
    ({"num_nodes": 1, "pmi": "pmix"}, {"num_nodes": 1, "ranks_per_node": 1, "num_ranks": 1, "pmi": "pmix"}),
    ({"num_nodes": 1, "pmi": "mpiexec"}, {"num_nodes": 1, "ranks_per_node": 1, "num_ranks": 1, "pmi": "mpiexec"}),
    ({"cpus_per_rank": 4}, {"cpus_per_rank": 4}),
    ({"gpus_per_rank": 0}, {"gpus_per_rank": 0}),
    ({"gpus_per_rank": 2}, {"gpus_per_rank": 2}),
    ({"cpu_bind": True}, {"cpu_bind": True}),
    ({"cpu_bind": False}, {"cpu_bind": False}),
    ({"cpu_bind": "core"}, {"cpu_bind": True}),
    ({"cpu_bind": "none"}, {"cpu_bind": False}),
    ({"cpu_bind": "CORE"}, {"cpu_bind": True}),
    ({"priority": -3}, {"priority": -3}),
    ({"priority": 10}, {"priority": 10}),
    ({"walltime": 30}, {"walltime": 30}),
    ({"walltime": 0.5}, {"walltime": 0.5}),
]


@pytest.mark.parametrize("spec, expected", VALID, ids=[repr(s) for s, _ in VALID])
def test_valid_specs_normalize_to_canonical_form(spec, expected):
    result = normalize_spec(spec)
    assert result == expected
    json.loads(json.dumps(result, allow_nan=False))  # JSON-safe


@pytest.mark.parametrize("spec", [s for s, _ in VALID if s and is_mpi(s)])
def test_derived_counts_are_ints_and_consistent(spec):
    result = normalize_spec(spec)
    for key in ("num_nodes", "ranks_per_node", "num_ranks"):
        assert type(result[key]) is int, key
    assert result["num_ranks"] == result["num_nodes"] * result["ranks_per_node"]


def test_input_is_not_mutated():
    spec = {"num_nodes": "2", "ranks_per_node": 3, "cpu_bind": "core", "memory": 1}
    before = copy.deepcopy(spec)
    normalize_spec(spec)
    assert spec == before


def test_default_pmi_applies_only_to_mpi_tasks():
    assert normalize_spec({"num_nodes": 2}, default_pmi="cray")["pmi"] == "cray"
    assert normalize_spec({"num_nodes": 2, "pmi": "pmix"}, default_pmi="cray")["pmi"] == "pmix"
    assert "pmi" not in normalize_spec({"cpus_per_rank": 2}, default_pmi="cray")
    assert normalize_spec({}, default_pmi="cray") == {}


def test_invalid_default_pmi_names_pmi():
    with pytest.raises(InvalidResourceSpecification) as info:
        normalize_spec({}, default_pmi="slurm")
    assert _keys(info) == {"pmi"}


def test_check_pmi():
    assert [check_pmi(b) for b in resources.PMI_BACKENDS] == ["cray", "pmix", "mpiexec", "none"]
    with pytest.raises(InvalidResourceSpecification):
        check_pmi("PMIX")


# ---------------------------------------------------------------- invalid specs

INVALID = [
    ({"num_nodes": 0}, {"num_nodes"}),
    ({"num_nodes": -1}, {"num_nodes"}),
    ({"num_nodes": 1.5}, {"num_nodes"}),
    ({"num_nodes": 2.0}, {"num_nodes"}),
    ({"num_nodes": True}, {"num_nodes"}),
    ({"num_nodes": "two"}, {"num_nodes"}),
    ({"num_nodes": "1.5"}, {"num_nodes"}),
    ({"num_nodes": None}, {"num_nodes"}),
    ({"ranks_per_node": 0}, {"ranks_per_node"}),
    ({"ranks_per_node": False}, {"ranks_per_node"}),
    ({"num_ranks": -4}, {"num_ranks"}),
    ({"num_ranks": "0"}, {"num_ranks"}),
    ({"num_nodes": 3, "num_ranks": 8}, {"num_nodes", "num_ranks"}),
    ({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 5}, {"num_nodes", "ranks_per_node", "num_ranks"}),
    ({"ranks_per_node": 4, "num_ranks": 10}, {"ranks_per_node", "num_ranks"}),
    ({"launcher_options": 3}, {"launcher_options"}),
    ({"pmi": "slurm"}, {"pmi"}),
    ({"pmi": None}, {"pmi"}),
    ({"pmi": True}, {"pmi"}),
    ({"cpus_per_rank": 0}, {"cpus_per_rank"}),
    ({"cpus_per_rank": 1.0}, {"cpus_per_rank"}),
    ({"cpus_per_rank": True}, {"cpus_per_rank"}),
    ({"cpus_per_rank": "2"}, {"cpus_per_rank"}),
    ({"gpus_per_rank": -1}, {"gpus_per_rank"}),
    ({"gpus_per_rank": False}, {"gpus_per_rank"}),
    ({"cpu_bind": "socket"}, {"cpu_bind"}),
    ({"cpu_bind": 1}, {"cpu_bind"}),
    ({"priority": "urgent"}, {"priority"}),
    ({"priority": float("inf")}, {"priority"}),
    ({"priority": True}, {"priority"}),
    ({"walltime": 0}, {"walltime"}),
    ({"walltime": -5}, {"walltime"}),
    ({"walltime": float("inf")}, {"walltime"}),
    ({"walltime": float("nan")}, {"walltime"}),
    ({"walltime": True}, {"walltime"}),
    ({"walltime": "10"}, {"walltime"}),
    ({"memory": object()}, {"memory"}),
    ({"memory": float("nan")}, {"memory"}),
    ({1: "x"}, {"1"}),
]


@pytest.mark.parametrize("spec, keys", INVALID, ids=[repr(s) for s, _ in INVALID])
def test_invalid_specs_raise_naming_the_keys(spec, keys):
    with pytest.raises(InvalidResourceSpecification) as info:
        normalize_spec(spec)
    assert _keys(info) == keys
    assert info.value.message  # says why


@pytest.mark.parametrize("spec", [[("num_nodes", 1)], "num_nodes=2", 3])
def test_non_dict_spec_is_rejected(spec):
    with pytest.raises(InvalidResourceSpecification) as info:
        normalize_spec(spec)
    assert _keys(info) == {"<spec>"}


# ---------------------------------------------------------------- unknown keys

@pytest.mark.parametrize("spec", [{"cores": 1, "memory": 1}, {"cpus": 1, "memory": 1, "disk": 1}])
def test_parsl_generic_keys_are_kept_not_rejected(spec):
    # the two specs of Parsl's own test_resource (issue_3620)
    assert normalize_spec(spec) == spec


def test_unknown_keys_warn_once_per_key(caplog):
    caplog.set_level(logging.WARNING, logger=resources.__name__)
    normalize_spec({"cores": 1, "memory": 2})
    normalize_spec({"cores": 4, "disk": 1})
    normalize_spec({"memory": 8, "num_nodes": 1})
    messages = [r.getMessage() for r in caplog.records if r.name == resources.__name__]
    assert len(messages) == 3
    for key in ("cores", "memory", "disk"):
        assert sum(repr(key) in m for m in messages) == 1, key


def test_known_keys_do_not_warn(caplog):
    caplog.set_level(logging.WARNING, logger=resources.__name__)
    normalize_spec({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 4, "launcher_options": "",
                    "pmi": "cray", "cpus_per_rank": 2, "gpus_per_rank": 1, "cpu_bind": "core",
                    "priority": 1, "walltime": 60})
    assert [r for r in caplog.records if r.name == resources.__name__] == []


def test_unknown_json_values_are_kept_as_given():
    spec = {"tags": ["a", "b"], "nested": {"x": 1.5, "y": None}}
    assert normalize_spec(spec) == spec


# ---------------------------------------------------------------- is_mpi / request_for

@pytest.mark.parametrize("spec, mpi", [
    ({}, False), ({"cpus_per_rank": 4, "gpus_per_rank": 1, "priority": 2}, False), ({"cores": 2}, False),
    ({"num_nodes": 1}, True), ({"ranks_per_node": 2}, True), ({"num_ranks": 2}, True),
    ({"launcher_options": ""}, True), ({"pmi": "none"}, True),
])
def test_is_mpi(spec, mpi):
    assert is_mpi(spec) is mpi
    assert is_mpi(normalize_spec(spec)) is mpi


def test_request_for_serial_and_mpi():
    assert request_for(7, normalize_spec({})) == Request(7)
    spec = normalize_spec({"num_ranks": 8, "num_nodes": 2, "cpus_per_rank": 2, "gpus_per_rank": 1, "priority": 5})
    req = request_for(8, spec)
    assert req == Request(8, num_nodes=2, ranks_per_node=4, cpus_per_rank=2, gpus_per_rank=1, priority=5)
    assert req.shape == (2, 8, 4)


# ---------------------------------------------------------------- check_fits

BLOCK = [NodeSlots("a", 64, gpus=4), NodeSlots("b", 64, gpus=4), NodeSlots("c", 128)]


@pytest.mark.parametrize("spec", [
    {}, {"num_nodes": 3}, {"num_nodes": 3, "ranks_per_node": 64}, {"ranks_per_node": 64, "cpus_per_rank": 2},
    {"num_nodes": 2, "ranks_per_node": 4, "gpus_per_rank": 1}, {"cpus_per_rank": 128}, {"gpus_per_rank": 4},
])
def test_check_fits_accepts_what_fits(spec):
    assert check_fits(normalize_spec(spec), BLOCK) is None


@pytest.mark.parametrize("spec, keys", [
    ({"num_nodes": 4}, {"num_nodes"}),
    ({"num_ranks": 8, "ranks_per_node": 2}, {"num_nodes"}),  # 4 nodes derived
    ({"ranks_per_node": 129}, {"ranks_per_node"}),
    ({"ranks_per_node": 65, "cpus_per_rank": 2}, {"ranks_per_node", "cpus_per_rank"}),
    ({"cpus_per_rank": 129}, {"cpus_per_rank"}),
    ({"num_nodes": 1, "cpus_per_rank": 129}, {"cpus_per_rank"}),  # derived ranks_per_node=1 is not to blame
    ({"num_nodes": 2, "ranks_per_node": 65}, {"num_nodes", "ranks_per_node"}),
    ({"num_nodes": 2, "cpus_per_rank": 100, "gpus_per_rank": 1}, {"num_nodes", "cpus_per_rank"}),
    # enough big nodes and enough GPU nodes, but no big GPU node: both per-node keys named
    ({"cpus_per_rank": 100, "gpus_per_rank": 1}, {"num_nodes", "cpus_per_rank", "gpus_per_rank"}),
    ({"gpus_per_rank": 5}, {"gpus_per_rank"}),
    ({"ranks_per_node": 5, "gpus_per_rank": 1}, {"ranks_per_node", "gpus_per_rank"}),
    ({"num_nodes": 3, "gpus_per_rank": 1}, {"num_nodes", "gpus_per_rank"}),  # only 2 nodes have GPUs
    ({"num_nodes": 2, "ranks_per_node": 100}, {"num_nodes", "ranks_per_node"}),  # only c has 100 cores
])
def test_check_fits_names_the_keys(spec, keys):
    with pytest.raises(InvalidResourceSpecification) as info:
        check_fits(normalize_spec(spec), BLOCK)
    assert _keys(info) == keys


def test_check_fits_on_an_empty_block():
    with pytest.raises(InvalidResourceSpecification) as info:
        check_fits({}, [])
    assert _keys(info) == {"num_nodes"}
