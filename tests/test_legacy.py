"""ldm.legacy: the modules kept for original import paths resolve from those paths and import no façade."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import ldm.legacy

LEGACY_NAMES = {
    "ldm.legacy.rescalers": ("SimpleDecoder", "UpsampleDecoder", "LatentRescaler", "MergedRescaleEncoder",
                             "MergedRescaleDecoder", "Upsampler", "Resize", "FirstStagePostProcessor"),
    "ldm.legacy.pixel_unet": ("Model", "get_timestep_embedding"),
}


@pytest.mark.parametrize("module", sorted(LEGACY_NAMES))
def test_original_path_serves_the_legacy_object(module: str) -> None:
    original = importlib.import_module("ldm.modules.diffusionmodules.model")
    home = importlib.import_module(module)
    for name in LEGACY_NAMES[module]:
        assert getattr(original, name) is getattr(home, name), name


@pytest.mark.parametrize("module", sorted(LEGACY_NAMES))
def test_legacy_module_does_not_import_the_facade_that_re_exports_it(module: str) -> None:
    path = Path(ldm.legacy.__file__).parent / f"{module.rsplit('.', 1)[1]}.py"
    imported = {node.module for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"ldm.modules.diffusionmodules.model", "ldm.modules.diffusionmodules.rescalers",
                           "ldm.modules.diffusionmodules.pixel_unet"}
