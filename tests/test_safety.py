"""ldm.safety: the original txt2img's NSFW check (external weights; faked here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ldm import safety


def test_flagged_images_are_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def extractor(images, return_tensors):
        seen["pil"] = images
        return SimpleNamespace(pixel_values=torch.zeros(len(images), 3, 4, 4))

    def checker(images, clip_input):
        return images.copy(), [False, True]

    monkeypatch.setattr(safety, "safety_models", lambda: (extractor, checker))
    monkeypatch.setattr(safety, "load_replacement", lambda x: np.ones_like(x))
    images = np.full((2, 4, 4, 3), 0.25, dtype=np.float32)
    checked, flags = safety.check_safety(images)
    assert flags == [False, True] and len(seen["pil"]) == 2
    np.testing.assert_array_equal(checked[0], images[0])
    np.testing.assert_array_equal(checked[1], 1.0)


def test_missing_package_or_weights_are_named() -> None:
    """Offline and without the weights in the cache, loading fails with a message naming what is missing."""
    safety.safety_models.cache_clear()
    need = "diffusers" if importlib.util.find_spec("diffusers") is None else "safety checker weights"
    with pytest.raises(RuntimeError, match=need):
        safety.safety_models()
