"""LSUN datasets over the original data/lsun/ layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.data.lsun import LSUNBase, LSUNChurchesTrain, LSUNChurchesValidation
from ldm.util import ConfigError


def test_churches_read_the_file_list_and_centre_crop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data" / "lsun" / "churches"
    root.mkdir(parents=True)
    array = np.zeros((6, 10, 3), dtype=np.uint8)
    array[:, 2:8] = 255
    Image.fromarray(array).save(root / "a.png")
    (tmp_path / "data" / "lsun" / "church_outdoor_val.txt").write_text("a.png\n")
    dataset = LSUNChurchesValidation()
    assert len(dataset) == 1 and dataset.flip_p == 0.0
    example = dataset[0]
    assert example["relative_file_path_"] == "a.png" and example["file_path_"] == "data/lsun/churches/a.png"
    assert example["image"].shape == (6, 6, 3) and example["image"].dtype == np.float32
    np.testing.assert_allclose(example["image"], 1.0)
    resized = LSUNBase("data/lsun/church_outdoor_val.txt", "data/lsun/churches", size=3, flip_p=0.0)[0]["image"]
    assert resized.shape == (3, 3, 3)


def test_missing_file_list_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="church_outdoor_train.txt"):
        LSUNChurchesTrain(size=256)


def test_flip_draws_once_per_example_even_with_flip_p_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As torchvision's RandomHorizontalFlip: one ``torch.rand(1)`` per example; flip iff it is below ``flip_p``."""
    import torch

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data" / "lsun" / "churches"
    root.mkdir(parents=True)
    array = np.zeros((4, 4, 3), dtype=np.uint8)
    array[:, :2] = 255
    Image.fromarray(array).save(root / "a.png")
    (tmp_path / "data" / "lsun" / "church_outdoor_val.txt").write_text("a.png\n")
    torch.manual_seed(0)
    draws = torch.rand(3)
    torch.manual_seed(0)
    LSUNChurchesValidation()[0]
    assert torch.rand(1).item() == draws[1].item()
    torch.manual_seed(0)
    flips = [LSUNBase("data/lsun/church_outdoor_val.txt", "data/lsun/churches", flip_p=0.5)[0]["image"][0, 0, 0] < 0
             for _ in range(3)]
    assert flips == [bool(d < 0.5) for d in draws]
