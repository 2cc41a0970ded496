"""The original MiDaS loader functions (``ldm.modules.midas.api``): paths, transform, weights from a local file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm.modules.midas.api import ISL_PATHS, load_midas_transform, load_model
from ldm.modules.midas.dpt import DPTDepthModel


def test_transform_resizes_by_the_minimal_rule_and_maps_to_minus_one_one():
    image = np.full((256, 320, 3), 0.75, dtype=np.float32)
    sample = load_midas_transform("dpt_hybrid")({"image": image, "key": 1})
    assert sample["image"].shape == (3, 320, 384) and sample["image"].dtype == np.float32 and sample["key"] == 1
    np.testing.assert_allclose(sample["image"], 0.5, atol=1e-6)  # (0.75 - 0.5) / 0.5


def test_load_model_reads_the_released_file_and_names_a_missing_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="dpt_hybrid-midas-501f0c75.pt"):
        load_model("dpt_hybrid")
    with pytest.raises(ValueError, match="dpt_hybrid"):
        load_midas_transform("DPT_Hybrid")
    with pytest.raises(FileNotFoundError, match=r"ISL_PATHS\['midas_v21'\]"):
        load_model("midas_v21")
    source = DPTDepthModel(backbone="vitb_rn50_384")
    path = tmp_path / ISL_PATHS["dpt_hybrid"]
    path.parent.mkdir()
    torch.save(source.state_dict(), path)
    model, transform = load_model("dpt_hybrid")
    assert not model.training and callable(transform)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize(("model_type", "side"), [("midas_v21", 384), ("midas_v21_small", 256)])
def test_v21_transform_bounds_the_longer_side_and_uses_imagenet_statistics(model_type, side):
    """"upper_bound" with the aspect ratio kept: the longer side becomes ``side``, the other the multiple of 32
    below it (100 × 150 → 256 × 384 for 384); a constant image maps to (v − mean) / std per channel."""
    image = np.full((100, 150, 3), 0.5, dtype=np.float32)
    out = load_midas_transform(model_type)({"image": image})["image"]
    assert out.shape == (3, side * 2 // 3 // 32 * 32, side) and out.dtype == np.float32
    expected = (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out.mean(axis=(1, 2)), expected, atol=1e-5)


def test_v21_weights_load_from_the_configured_file(tmp_path, monkeypatch):
    from ldm.modules.midas.loading import build_network

    torch.manual_seed(0)
    source = build_network("midas_v21_small")
    path = tmp_path / "midas_v21_small.pt"
    torch.save(source.state_dict(), path)
    monkeypatch.setitem(ISL_PATHS, "midas_v21_small", str(path))
    model, _ = load_model("midas_v21_small")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
