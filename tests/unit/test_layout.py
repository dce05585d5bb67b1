"""The package layout is the architecture: which folder may import which (docs/architecture.md).

Each folder is one place where code runs; an import outside its allowed arrows is a layering
error caught here, not in review. Read statically (ast), so lazy imports count too.
"""
import ast
import pathlib

import pytest

import parsl_dragon

ROOT = pathlib.Path(parsl_dragon.__file__).parent

# folder -> the folders of parsl_dragon it may import (besides itself); "" is the top level
# (vocabulary.py, errors.py), which every folder may use.
ALLOWED = {
    "": set(),
    "core": set(),
    "wire": {"core"},
    "host": set(),
    "task": {"core", "wire"},
    "driver": {"core", "wire", "task", "host"},   # task: the DragonRadio config object, kept references and form
    "server": {"core", "wire", "host", "task"},
    "cli": {"driver", "wire", "host"},
    "globus_compute": {"driver"},  # the endpoint process: an engine over a DragonExecutor
}
PURE = {"core", "host", ""}  # import neither zmq nor dragon
DRAGON_ONLY_IN = {"server/backend.py", "server/shelf.py"}  # the runtime; the kept-results DDict


def _group(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else ""


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            if node.module == "parsl_dragon":
                yield from (f"parsl_dragon.{alias.name}" for alias in node.names)


MODULES = sorted(p for p in ROOT.rglob("*.py") if p.name != "__init__.py" or _group(p))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_follows_the_arrows(path):
    group = _group(path)
    allowed = ALLOWED[group] | {group, ""}
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "parsl_dragon" and len(parts) > 1:
            target = parts[1] if (ROOT / parts[1]).is_dir() else ""
            assert target in allowed, f"{path.relative_to(ROOT)} imports {name}: {group or 'top'} -> {target}"
        if parts[0] == "dragon":
            assert str(path.relative_to(ROOT)) in DRAGON_ONLY_IN, f"{path.relative_to(ROOT)} imports dragon"
        if group in PURE:
            assert parts[0] not in ("zmq", "dragon"), f"{path.relative_to(ROOT)} is pure but imports {name}"


def test_every_folder_is_placed():
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(ALLOWED) - {""}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_much_longer_than_400_lines(path):
    assert len(path.read_text().splitlines()) <= 430, f"{path.relative_to(ROOT)}: split it by role"
