"""The gpu package imports in one direction: nvml <- inventory <- select, free, render; no cycle.

Module-level imports only count (imports inside functions and under TYPE_CHECKING run later, or
never); a cycle among them makes the import order matter, so each module is also imported first
in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gpuops

PACKAGE = Path(gpuops.__file__).parent
GPU_MODULES = sorted(f"gpuops.gpu.{p.stem}" for p in (PACKAGE / "gpu").glob("*.py") if p.stem != "__init__")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(path: Path, known: set[str]) -> set[str]:
    """The gpuops modules `path` imports when it is imported (not in functions, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)

    visit(tree.body)
    return {m for m in found if m in known}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: _top_level_imports(path, known) - {name} for name, path in paths.items()}


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


@pytest.mark.parametrize("module", GPU_MODULES)
def test_no_gpu_module_imports_in_a_cycle(module):
    assert _cycle_through(import_graph(), module) is None


def test_inventory_imports_none_of_the_modules_built_on_it():
    assert not {m for m in import_graph()["gpuops.gpu.inventory"] if m.startswith("gpuops.gpu.")} - {
        "gpuops.gpu.nvml"}


@pytest.mark.parametrize("module", GPU_MODULES)
def test_each_gpu_module_imports_first_in_a_fresh_interpreter(module):
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_names_that_moved_out_of_inventory_are_still_importable_from_it():
    from gpuops.gpu import free, inventory, render, select

    assert inventory.free_gpus is free.free_gpus and inventory.check_gpus_free is free.check_gpus_free
    assert inventory.needed_gpus is select.needed_gpus and inventory.banner_lines is render.banner_lines
    for name in inventory._MOVED:
        assert getattr(inventory, name) is not None, name
    with pytest.raises(AttributeError):
        inventory.no_such_name  # noqa: B018
