"""Unit tests for parsl_dragon.core.spec: spec validation, derived values, the wire form, fit checks."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math

import pytest
from parsl.executors.errors import InvalidResourceSpecification

from parsl_dragon.core import spec as resources
from parsl_dragon.core.placement import NodeSlots, Request
from parsl_dragon.core.spec import TaskSpec, check_fits, check_pmi, normalize_spec, request_for
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
    ({"gpus_per_rank": 0}, {}),  # a value given as its default is the default: the wire form omits it
    ({"gpus_per_rank": 2}, {"gpus_per_rank": 2}),
    ({"cpu_bind": True}, {"cpu_bind": True}),
    ({"cpu_bind": False}, {}),
    ({"cpu_bind": "core"}, {"cpu_bind": True}),
    ({"cpu_bind": "none"}, {}),
    ({"cpu_bind": "CORE"}, {"cpu_bind": True}),
    ({"priority": -3}, {"priority": -3}),
    ({"priority": 10}, {"priority": 10}),
    ({"walltime": 30}, {"walltime": 30}),
    ({"walltime": 0.5}, {"walltime": 0.5}),
]


@pytest.mark.parametrize("spec, expected", VALID, ids=[repr(s) for s, _ in VALID])
def test_valid_specs_normalize_to_canonical_form(spec, expected):
    result = normalize_spec(spec)
    assert isinstance(result, TaskSpec)
    assert result.to_wire() == expected
    json.loads(json.dumps(result.to_wire(), allow_nan=False))  # JSON-safe


@pytest.mark.parametrize("spec", [s for s, _ in VALID if s and normalize_spec(s).is_mpi])
def test_derived_counts_are_ints_and_consistent(spec):
    result = normalize_spec(spec)
    for key in ("num_nodes", "ranks_per_node", "num_ranks"):
        assert type(getattr(result, key)) is int, key
    assert result.num_ranks == result.num_nodes * result.ranks_per_node


def test_derived_and_default_values_are_filled_in():
    mpi = normalize_spec({"num_ranks": 8, "num_nodes": 2}, default_pmi="cray")
    assert (mpi.num_nodes, mpi.ranks_per_node, mpi.num_ranks, mpi.pmi) == (2, 4, 8, "cray")
    assert (mpi.launcher_options, mpi.cpus_per_rank, mpi.gpus_per_rank, mpi.cpu_bind) == ("", 1, 0, False)
    assert mpi.priority == math.inf and mpi.walltime is None and mpi.is_mpi
    serial = normalize_spec({"cpus_per_rank": 2, "walltime": 5})
    assert serial == TaskSpec(cpus_per_rank=2, walltime=5) and not serial.is_mpi
    assert (serial.num_nodes, serial.ranks_per_node, serial.num_ranks, serial.pmi) == (1, 1, 1, None)
    assert normalize_spec({}) == normalize_spec(None) == TaskSpec()


def test_task_spec_is_frozen_and_hashable():
    spec = normalize_spec({"num_nodes": 2, "cpu_bind": "core", "priority": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_nodes = 3
    assert hash(spec) == hash(normalize_spec({"num_nodes": "2", "cpu_bind": True, "priority": 3}))
    assert len({spec, normalize_spec({"num_nodes": 2, "cpu_bind": True, "priority": 3}), TaskSpec()}) == 2


@pytest.mark.parametrize("kwargs, keys", [
    ({"num_nodes": 2}, {"pmi"}),                            # several ranks, but no pmi: not an MPI task
    ({"launcher_options": "-x"}, {"pmi"}),
    ({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 5, "pmi": "none"},
     {"num_nodes", "ranks_per_node", "num_ranks"}),
    ({"num_nodes": "2", "num_ranks": 2, "pmi": "none"}, {"num_nodes"}),
    ({"pmi": "slurm"}, {"pmi"}),
    ({"cpu_bind": "core"}, {"cpu_bind"}),                   # the constructor takes canonical values only
    ({"priority": math.nan}, {"priority"}),
    ({"priority": -math.inf}, {"priority"}),
    ({"walltime": 0}, {"walltime"}),
    ({"gpus_per_rank": -1}, {"gpus_per_rank"}),
])
def test_the_constructor_checks_its_fields(kwargs, keys):
    with pytest.raises(InvalidResourceSpecification) as info:
        TaskSpec(**kwargs)
    assert _keys(info) == keys


def test_input_is_not_mutated():
    spec = {"num_nodes": "2", "ranks_per_node": 3, "cpu_bind": "core", "memory": 1}
    before = copy.deepcopy(spec)
    normalize_spec(spec)
    assert spec == before


def test_default_pmi_applies_only_to_mpi_tasks():
    assert normalize_spec({"num_nodes": 2}, default_pmi="cray").pmi == "cray"
    assert normalize_spec({"num_nodes": 2, "pmi": "pmix"}, default_pmi="cray").pmi == "pmix"
    assert normalize_spec({"cpus_per_rank": 2}, default_pmi="cray").pmi is None
    assert "pmi" not in normalize_spec({"cpus_per_rank": 2}, default_pmi="cray").to_wire()
    assert normalize_spec({}, default_pmi="cray").to_wire() == {}


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
    ({"walltime": 10**400}, {"walltime"}),      # no float holds it
    ({"priority": 10**400}, {"priority"}),
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
def test_parsl_generic_keys_are_accepted_not_rejected(spec):
    # the two specs of Parsl's own test_resource (issue_3620): accepted, but nothing uses them,
    # so they do not travel (a server refuses keys it does not know)
    assert normalize_spec(spec) == TaskSpec()
    assert normalize_spec(spec).to_wire() == {}


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


def test_unknown_json_values_are_accepted():
    spec = {"tags": ["a", "b"], "nested": {"x": 1.5, "y": None}, "cpus_per_rank": 2}
    assert normalize_spec(spec) == TaskSpec(cpus_per_rank=2)


# ---------------------------------------------------------------- is_mpi / request_for

@pytest.mark.parametrize("spec, mpi", [
    ({}, False), ({"cpus_per_rank": 4, "gpus_per_rank": 1, "priority": 2}, False), ({"cores": 2}, False),
    ({"num_nodes": 1}, True), ({"ranks_per_node": 2}, True), ({"num_ranks": 2}, True),
    ({"launcher_options": ""}, True), ({"pmi": "none"}, True),
])
def test_is_mpi(spec, mpi):
    assert normalize_spec(spec).is_mpi is mpi
    assert TaskSpec.from_wire(normalize_spec(spec).to_wire()).is_mpi is mpi


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
        check_fits(TaskSpec(), [])
    assert _keys(info) == {"num_nodes"}


# ---------------------------------------------------------------- wire form

@pytest.mark.parametrize("spec", [s for s, _ in VALID], ids=[repr(s) for s, _ in VALID])
def test_wire_round_trip(spec):
    normalized = normalize_spec(spec, default_pmi="pmix")
    wire = json.loads(json.dumps(normalized.to_wire(), allow_nan=False))  # as it travels
    assert TaskSpec.from_wire(wire) == normalized


def test_wire_form_of_serial_and_mpi_specs():
    assert TaskSpec().to_wire() == {}
    assert TaskSpec(cpus_per_rank=2, priority=0, walltime=1.5).to_wire() == \
        {"cpus_per_rank": 2, "priority": 0, "walltime": 1.5}
    mpi = normalize_spec({"ranks_per_node": 2, "cpu_bind": "core", "launcher_options": "-v"}, default_pmi="cray")
    assert mpi.to_wire() == {"num_nodes": 1, "ranks_per_node": 2, "num_ranks": 2, "pmi": "cray",
                             "launcher_options": "-v", "cpu_bind": True}


WIRE_INVALID = [
    ([], {"<spec>"}),
    ("num_nodes=2", {"<spec>"}),
    ({"cores": 2}, {"cores"}),                                       # a key this side does not know
    ({"cpus_per_rank": 1, "memory": 1, "disk": 2}, {"memory", "disk"}),
    ({"num_nodes": 2}, {"ranks_per_node", "num_ranks", "pmi"}),      # an MPI task carries its counts and pmi
    ({"launcher_options": "-v"}, {"num_nodes", "ranks_per_node", "num_ranks", "pmi"}),
    ({"num_nodes": "2", "ranks_per_node": 1, "num_ranks": 2, "pmi": "none"}, {"num_nodes"}),  # not a JSON int
    ({"num_nodes": -2, "ranks_per_node": 1, "num_ranks": -2, "pmi": "none"}, {"num_nodes"}),
    ({"num_nodes": 2, "ranks_per_node": 0, "num_ranks": 0, "pmi": "none"}, {"ranks_per_node"}),
    ({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 3, "pmi": "none"},
     {"num_nodes", "ranks_per_node", "num_ranks"}),
    ({"num_nodes": 1, "ranks_per_node": 1, "num_ranks": 1, "pmi": "slurm"}, {"pmi"}),
    ({"num_nodes": 1, "ranks_per_node": 1, "num_ranks": 1, "pmi": None}, {"pmi"}),
    ({"cpus_per_rank": -1}, {"cpus_per_rank"}),
    ({"cpus_per_rank": 2.0}, {"cpus_per_rank"}),
    ({"gpus_per_rank": -3}, {"gpus_per_rank"}),
    ({"gpus_per_rank": True}, {"gpus_per_rank"}),
    ({"cpu_bind": "core"}, {"cpu_bind"}),                            # the wire form says true / false
    ({"cpu_bind": 1}, {"cpu_bind"}),
    ({"priority": "x"}, {"priority"}),
    ({"priority": 10**400}, {"priority"}),
    ({"priority": float("nan")}, {"priority"}),
    ({"walltime": -1}, {"walltime"}),
    ({"walltime": None}, {"walltime"}),
    ({"launcher_options": ["-v"], "num_nodes": 1, "ranks_per_node": 1, "num_ranks": 1, "pmi": "none"},
     {"launcher_options"}),
]


@pytest.mark.parametrize("wire, keys", WIRE_INVALID, ids=[repr(w) for w, _ in WIRE_INVALID])
def test_from_wire_refuses_what_to_wire_never_makes(wire, keys):
    with pytest.raises(InvalidResourceSpecification) as info:
        TaskSpec.from_wire(wire)
    assert _keys(info) == keys
    assert info.value.message


def test_from_wire_errors_stay_short():
    with pytest.raises(InvalidResourceSpecification) as info:
        TaskSpec.from_wire({"launcher_options": "x" * 100_000, "num_nodes": 1, "ranks_per_node": 1,
                            "num_ranks": 1, "pmi": ["y" * 100_000]})
    assert len(str(info.value)) < 300
    with pytest.raises(InvalidResourceSpecification) as info:
        TaskSpec.from_wire({f"k{i:05d}" + "z" * 1000: i for i in range(10_000)})
    assert len(info.value.invalid_keys) == 10 and len(str(info.value)) < 2000


def test_check_fits_says_how_many_gpus_a_node_has_or_that_the_block_has_none():
    with pytest.raises(InvalidResourceSpecification, match="largest node has 4") as info:
        check_fits(normalize_spec({"gpus_per_rank": 5}), BLOCK)
    assert "gpus_per_rank 5" in str(info.value)
    with pytest.raises(InvalidResourceSpecification, match="this block has no GPUs") as info:
        check_fits(normalize_spec({"gpus_per_rank": 1}), [NodeSlots("a", 8)])
    assert _keys(info) == {"gpus_per_rank"} and "available_accelerators" in str(info.value)
