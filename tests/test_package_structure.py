"""The shape of the ``ldm`` package: no import circles, no deep class stacks, the original paths resolve."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import ldm

PACKAGE_ROOT = Path(ldm.__file__).parent
MODULES = sorted(info.name for info in pkgutil.walk_packages([str(PACKAGE_ROOT)], prefix="ldm."))


def module_file(name: str) -> Path:
    relative = Path(*name.split(".")[1:])
    package = PACKAGE_ROOT / relative / "__init__.py"
    return package if package.exists() else PACKAGE_ROOT / relative.with_suffix(".py")


def imported_ldm_modules(name: str) -> set[str]:
    """Every ``ldm.*`` module ``name`` imports anywhere in its file (function-level imports included)."""
    tree = ast.parse(module_file(name).read_text())
    is_package = module_file(name).name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one node (the import circles)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_the_walk_sees_the_whole_package():
    assert {"ldm.models.diffusion.ddpm", "ldm.modules.attention", "ldm.legacy.layout_diffusion"} <= set(MODULES)
    assert "ldm.models.diffusion.latent_diffusion" in imported_ldm_modules("ldm.models.diffusion.ddpm")


def test_no_import_circles():
    graph = {name: imported_ldm_modules(name) for name in MODULES}
    assert strongly_connected(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_level_getattr_tricks():
    for name in MODULES:
        tree = ast.parse(module_file(name).read_text())
        top_level = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert "__getattr__" not in top_level, f"{name} resolves names lazily through a module __getattr__"


def _own_classes() -> list[type]:
    classes = []
    for name in MODULES:
        module = importlib.import_module(name)
        classes += [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == name]
    return classes


def test_no_class_has_more_than_two_bases_besides_lightnings():
    for cls in _own_classes():
        own = [base for base in cls.__bases__ if not base.__module__.startswith(("pytorch_lightning", "lightning"))]
        assert len(own) <= 2, f"{cls.__module__}.{cls.__qualname__} has bases {cls.__bases__}"


@pytest.mark.parametrize(
    "path",
    [
        "ldm.models.diffusion.ddpm.DDPM",
        "ldm.models.diffusion.ddpm.LatentDiffusion",
        "ldm.models.diffusion.ddpm.Layout2ImgDiffusion",
        "ldm.models.diffusion.ddpm.DiffusionWrapper",
        "ldm.models.diffusion.ddpm.disabled_train",
        "ldm.models.diffusion.ddpm.uniform_on_device",
        "ldm.models.diffusion.ddpm.__conditioning_keys__",
    ],
)
def test_original_paths_resolve(path):
    module, _, attr = path.rpartition(".")
    assert getattr(importlib.import_module(module), attr) is not None
