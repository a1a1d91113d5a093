"""The house: rooms, the arrows between them, and what each room may import.

`docs/architecture.md` is the prose of the same table (`MAY_IMPORT`); change both together.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from import_graph import cycles, import_graph, module_names, rooms

PACKAGE = Path(__file__).resolve().parents[1] / "pusa_batch"
REPO = PACKAGE.parent
GROUND = {"errors", "item", "cells", "tasks", "sampler", "video"}

# Room -> the rooms it may import. Arrows point down; the CLI sits on top.
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "redaction": set(),
    "sampler": set(),
    "cells": {"errors"},
    "video": {"errors"},
    "item": {"errors"},
    "tasks": {"cells", "errors"},
    "models": {"errors"},
    "store": {"errors", "redaction"},
    "weights": {"errors", "redaction", "store"},
    "pipelines": {"errors", "item", "models", "sampler", "tasks", "video", "weights"},
    "manifest": {"cells", "errors", "item", "pipelines", "redaction", "tasks", "video"},
    "doctor": {"errors", "models", "pipelines"},
    "outputs": {"errors", "item", "manifest", "redaction", "store", "video"},
    "engine": {
        "(face)",
        "doctor",
        "errors",
        "item",
        "manifest",
        "pipelines",
        "redaction",
        "store",
        "video",
        "weights",
    },
    "cli": {
        "(face)",
        "doctor",
        "engine",
        "errors",
        "manifest",
        "models",
        "outputs",
        "pipelines",
        "redaction",
        "store",
        "tasks",
        "weights",
    },
    "__main__": {"cli"},
    "(face)": set(),  # the face names its modules as strings, imported on first use
}
# Room -> third-party packages it must never import (torch-free and Ray-free rooms).
NEVER_IMPORTS: dict[str, set[str]] = {
    "store": {"torch", "ray", "diffusers", "transformers"},
    "weights": {"torch", "ray", "diffusers", "transformers", "safetensors"},
    "manifest": {"torch", "ray", "diffusers", "transformers"},
    "outputs": {"torch", "ray", "diffusers", "transformers"},
    "item": {"torch", "ray", "numpy", "pandas"},
    "errors": {"torch", "ray"},
    "models": {"ray", "fsspec", "pyarrow", "pandas"},
    "sampler": {"ray", "fsspec", "pyarrow", "pandas", "diffusers", "transformers"},
}


def test_no_module_imports_itself_back_through_others():
    assert cycles(import_graph(PACKAGE)) == []


def test_no_two_rooms_import_each_other():
    assert cycles(rooms(import_graph(PACKAGE), PACKAGE.name)) == []


def test_each_room_imports_only_the_rooms_below_it():
    graph = rooms(import_graph(PACKAGE), PACKAGE.name)
    assert set(graph) == set(MAY_IMPORT), "a room was added or removed: update MAY_IMPORT"
    extra = {room: sorted(targets - MAY_IMPORT[room]) for room, targets in graph.items()}
    assert {room: found for room, found in extra.items() if found} == {}


def test_the_package_root_holds_the_face_and_the_ground_floor_only():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "__main__", *GROUND}
    assert len(top) <= 8


def _third_party(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("room", sorted(NEVER_IMPORTS))
def test_a_room_stays_free_of_the_heavy_packages_it_must_not_know(room):
    modules = module_names(PACKAGE)
    files = [p for name, p in modules.items() if name.split(".")[1:2] == [room]]
    assert files
    found = {p.name: sorted(_third_party(p) & NEVER_IMPORTS[room]) for p in files}
    assert {name: bad for name, bad in found.items() if bad} == {}


def test_the_guard_finds_a_cycle_hidden_behind_a_lazy_import(tmp_path):
    package = tmp_path / "house"
    (package / "room").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "room" / "__init__.py").write_text("")
    (package / "room" / "a.py").write_text("from house.room.b import B\n")
    (package / "room" / "b.py").write_text("def f():\n    from house.c import C\n")
    (package / "c.py").write_text("from house.room import a\n")
    graph = import_graph(package)
    assert cycles(graph) == [["house.c", "house.room.a", "house.room.b"]]
    assert cycles(rooms(graph, "house")) == [["c", "room"]]


def test_the_guard_ignores_imports_that_only_type_checkers_see(tmp_path):
    package = tmp_path / "house"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from house import b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from house import a\n"
    )
    assert cycles(import_graph(package)) == []


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def test_importing_the_package_loads_neither_torch_nor_ray():
    assert _loaded_after("import pusa_batch; pusa_batch.RunConfig") == "[]"


def test_the_cli_help_loads_neither_torch_nor_ray():
    code = "from pusa_batch.cli.main import main\nmain(['--help'])"
    assert _loaded_after(code) == "[]"


def test_validating_against_a_pipeline_loads_neither_torch_nor_ray():
    code = (
        "from pusa_batch.cli.main import main\n"
        "main(['validate', 'manifests/demo.csv', '--pipeline', 'pipelines/tiny.toml'])"
    )
    assert _loaded_after(code) == "[]"


def test_status_against_a_pipeline_loads_neither_torch_nor_ray(tmp_path):
    code = (
        "from pusa_batch.cli.main import main\n"
        f"main(['status', {str(tmp_path / 'out')!r}, '--manifest', 'manifests/demo.csv', "
        "'--pipeline', 'pipelines/tiny.toml'])"
    )
    assert _loaded_after(code) == "[]"
