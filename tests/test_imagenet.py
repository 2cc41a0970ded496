"""ImageNet datasets over the layout the original code prepares (tiny fake tree, no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.data.imagenet import ImageNetTrain, ImageNetValidation, str_to_indices
from ldm.util import ConfigError


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    root = tmp_path / "ILSVRC2012_validation"
    for synset, value in (("n02", 200), ("n01", 50)):
        (root / "data" / synset).mkdir(parents=True)
        Image.fromarray(np.full((8, 12, 3), value, dtype=np.uint8)).save(root / "data" / synset / f"{synset}_1.JPEG")
    (root / "synset_human.txt").write_text("n01 goldfish, Carassius auratus\nn02 great white shark\n")
    (root / "index_synset.yaml").write_text("0: n09\n1: n01\n2: n02\n")
    return tmp_path


def test_validation_labels_and_images(prepared: Path) -> None:
    dataset = ImageNetValidation(config={"size": 4}, data_root=str(prepared))
    assert (prepared / "ILSVRC2012_validation" / "filelist.txt").read_text() == "n01/n01_1.JPEG\nn02/n02_1.JPEG\n"
    assert [dataset[i]["class_label"] for i in range(2)] == [0, 1]
    assert dataset[0]["human_label"] == "goldfish, Carassius auratus" and dataset[1]["synsets"] == "n02"
    image = dataset[1]["image"]
    assert image.shape == (4, 4, 3) and not dataset.random_crop
    np.testing.assert_allclose(image, 200 / 127.5 - 1.0, atol=1e-6)
    original = ImageNetValidation(config={"size": 4, "keep_orig_class_label": True}, data_root=str(prepared))
    assert [original[i]["class_label"] for i in range(2)] == [1, 2]
    assert ImageNetValidation(config={"sub_indices": "2-3"}, data_root=str(prepared)).relpaths == ["n02/n02_1.JPEG"]


def test_sub_indices_parsing_and_missing_data_is_named(tmp_path: Path) -> None:
    assert str_to_indices("0-3,7") == [0, 1, 2, 7]
    with pytest.raises(ConfigError, match="ILSVRC2012_train.*does not download"):
        ImageNetTrain(data_root=str(tmp_path))
