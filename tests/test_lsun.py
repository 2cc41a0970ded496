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
