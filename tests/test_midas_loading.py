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
        load_midas_transform("midas_v21")
    source = DPTDepthModel(backbone="vitb_rn50_384")
    path = tmp_path / ISL_PATHS["dpt_hybrid"]
    path.parent.mkdir()
    torch.save(source.state_dict(), path)
    model, transform = load_model("dpt_hybrid")
    assert not model.training and callable(transform)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
