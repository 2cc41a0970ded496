"""``ldm.data.faceshq`` (taming-transformers' face datasets) on tiny fake CelebA-HQ (.npy) and FFHQ (.png) trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm import taming_aliases
from ldm.data import faceshq
from ldm.data.image_paths import ConcatDatasetWithIndex, ImagePaths, NumpyPaths
from ldm.util import ConfigError, get_obj_from_str, instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 8, 12


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def _model_range(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.float64) / 127.5 - 1.0).astype(np.float32)


@pytest.fixture
def faces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[np.ndarray]]:
    """``data/`` in a fresh working directory: CelebA-HQ 2 train + 1 validation, FFHQ 3 train + 1 validation."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "celebahq").mkdir(parents=True)
    (tmp_path / "data" / "ffhq").mkdir()
    pixels: dict[str, list[np.ndarray]] = {}
    for name, count, seed in (("celebahqtrain", 2, 0), ("celebahqvalidation", 1, 10), ("ffhqtrain", 3, 20),
                              ("ffhqvalidation", 1, 30)):  # fmt: skip
        images = [_pixels(seed + k) for k in range(count)]
        files = []
        for k, image in enumerate(images):
            if name.startswith("celebahq"):
                files.append(f"{name}_{k}.npy")
                np.save(tmp_path / "data" / "celebahq" / files[-1], image.transpose(2, 0, 1)[None])
            else:
                files.append(f"{k:05d}_{name}.png")
                Image.fromarray(image).save(tmp_path / "data" / "ffhq" / files[-1])
        (tmp_path / "data" / f"{name}.txt").write_text("".join(f"{f}\n" for f in files))
        pixels[name] = images
    return pixels


@pytest.fixture
def no_taming(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taming_aliases, "taming_installed", lambda: False)
    monkeypatch.setattr(taming_aliases, "_announced", set())


# --------------------------------------------------------------------------------------------------------
# The single datasets
# --------------------------------------------------------------------------------------------------------


def test_celebahq_reads_npy_unchanged_without_size(faces) -> None:
    dataset = faceshq.CelebAHQTrain(size=None)
    assert len(dataset) == 2
    example = dataset[1]
    assert set(example) == {"image", "file_path_"} and example["file_path_"] == "data/celebahq/celebahqtrain_1.npy"
    assert example["image"].dtype == np.float32 and example["image"].shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(example["image"], _model_range(faces["celebahqtrain"][1]))


def test_ffhq_reads_png_unchanged_without_size(faces) -> None:
    dataset = faceshq.FFHQValidation(size=0)
    assert len(dataset) == 1 and dataset[0]["file_path_"] == "data/ffhq/00000_ffhqvalidation.png"
    np.testing.assert_array_equal(dataset[0]["image"], _model_range(faces["ffhqvalidation"][0]))


def test_size_equal_to_the_short_side_is_the_centre_crop(faces) -> None:
    image = faceshq.FFHQTrain(size=HEIGHT)[2]["image"]
    left = (WIDTH - HEIGHT) // 2
    np.testing.assert_array_equal(image, _model_range(faces["ffhqtrain"][2][:, left : left + HEIGHT]))


def test_halving_averages_two_by_two_blocks_then_centre_crops(faces) -> None:
    """Bilinear at pixel centres, factor 1/2: output (i, j) samples (2i + ½, 2j + ½), the mean of a 2×2 block."""
    pixels = faces["celebahqvalidation"][0].astype(np.float64)
    blocks = pixels.reshape(HEIGHT // 2, 2, WIDTH // 2, 2, 3).mean(axis=(1, 3))
    expected = np.rint(blocks)[:, 1:5]  # (4, 6) → centre 4 × 4: columns 1..4
    image = faceshq.CelebAHQValidation(size=4)[0]["image"]
    np.testing.assert_array_equal(image, _model_range(expected.astype(np.uint8)))


@pytest.mark.parametrize("size", [3, 5, 16])
def test_any_size_gives_size_squared_in_model_range(faces, size: int) -> None:
    for dataset in (faceshq.CelebAHQTrain(size=size), faceshq.FFHQTrain(size=size)):
        image = dataset[0]["image"]
        assert image.shape == (size, size, 3) and image.dtype == np.float32
        assert image.min() >= -1.0 and image.max() <= 1.0


def test_keys_keep_only_the_named_entries(faces) -> None:
    assert set(faceshq.FFHQTrain(size=4, keys=["image"])[0]) == {"image"}
    assert faceshq.CelebAHQTrain(size=4, keys=["file_path_"])[0] == {"file_path_": "data/celebahq/celebahqtrain_0.npy"}


def test_random_crop_reaches_every_window(faces) -> None:
    torch.manual_seed(0)
    pixels = faces["ffhqtrain"][0]
    dataset = ImagePaths(["data/ffhq/00000_ffhqtrain.png"], size=HEIGHT, random_crop=True)
    windows = {left: _model_range(pixels[:, left : left + HEIGHT]) for left in range(WIDTH - HEIGHT + 1)}
    seen = set()
    for _ in range(60):
        image = dataset[0]["image"]
        seen |= {left for left, window in windows.items() if np.array_equal(image, window)}
    assert seen == set(windows)


# --------------------------------------------------------------------------------------------------------
# FacesHQ: CelebA-HQ (class 0) + FFHQ (class 1)
# --------------------------------------------------------------------------------------------------------


def test_faceshq_concatenates_with_class(faces) -> None:
    dataset = faceshq.FacesHQTrain(size=None)
    assert len(dataset) == 5
    assert [dataset[i]["class"] for i in range(5)] == [0, 0, 1, 1, 1]
    np.testing.assert_array_equal(dataset[3]["image"], _model_range(faces["ffhqtrain"][1]))
    assert dataset[-1]["file_path_"] == "data/ffhq/00002_ffhqtrain.png"
    assert [faceshq.FacesHQValidation(size=None)[i]["class"] for i in range(2)] == [0, 1]


def test_faceshq_validation_crop_is_centred(faces) -> None:
    example = faceshq.FacesHQValidation(size=None, crop_size=4, coord=True)[1]
    top, left = (HEIGHT - 4) // 2, (WIDTH - 4) // 2
    np.testing.assert_array_equal(example["image"], _model_range(faces["ffhqvalidation"][0])[2:6, 4:8])
    rows, cols = np.mgrid[top : top + 4, left : left + 4]
    np.testing.assert_allclose(example["coord"][..., 0], (rows * WIDTH + cols) / (HEIGHT * WIDTH), rtol=1e-6)
    assert example["coord"].shape == (4, 4, 1) and example["class"] == 1


def test_faceshq_train_crop_and_coord_share_the_random_window(faces) -> None:
    torch.manual_seed(1)
    dataset = faceshq.FacesHQTrain(size=None, crop_size=5, coord=True)
    full = _model_range(faces["celebahqtrain"][0])
    corners = set()
    for _ in range(20):
        example = dataset[0]
        position = round(float(example["coord"][0, 0, 0]) * HEIGHT * WIDTH)
        top, left = divmod(position, WIDTH)
        corners.add((top, left))
        np.testing.assert_array_equal(example["image"], full[top : top + 5, left : left + 5])
        assert example["image"].shape == (5, 5, 3) and example["coord"].shape == (5, 5, 1)
    assert len(corners) > 1


def test_faceshq_without_crop_has_no_coord(faces) -> None:
    assert "coord" not in faceshq.FacesHQTrain(size=4, coord=True)[0]


def test_concat_with_index_counts_back_and_refuses_out_of_range() -> None:
    dataset = ConcatDatasetWithIndex([["a", "b"], ["c"]])
    assert [dataset[i] for i in range(-3, 3)] == [("a", 0), ("b", 0), ("c", 1)] * 2
    with pytest.raises(IndexError, match="out of range"):
        dataset[3]


# --------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------


def test_missing_file_list_names_it_and_what_to_put_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"FFHQTrain: file list 'data/ffhqtrain.txt' not found .* one file name"):
        faceshq.FFHQTrain(size=256)
    with pytest.raises(ConfigError, match=r"data/celebahqvalidation.txt.*\.npy arrays of shape \(1, 3, H, W\)"):
        faceshq.FacesHQValidation(size=256)


def test_missing_image_folder_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "celebahqtrain.txt").write_text("a.npy\n")
    with pytest.raises(ConfigError, match=r"image folder 'data/celebahq' not found"):
        faceshq.CelebAHQTrain(size=256)


def test_wrong_npy_layout_says_how_to_store_it(tmp_path: Path) -> None:
    path = tmp_path / "hwc.npy"
    np.save(path, np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"hwc.npy: expected a uint8 array of shape \(1, 3, H, W\)"):
        NumpyPaths([str(path)])[0]


def test_crop_larger_than_the_image_is_refused(faces) -> None:
    with pytest.raises(ValueError, match="crop size 9 is larger than the 8x12 image"):
        faceshq.FacesHQValidation(size=None, crop_size=9)[0]


# --------------------------------------------------------------------------------------------------------
# The released configs' data targets
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative",
    ["configs/latent-diffusion/ffhq-ldm-vq-4.yaml", "configs/latent-diffusion/celebahq-ldm-vq-4.yaml",
     "models/ldm/ffhq256/config.yaml", "models/ldm/celeba256/config.yaml"],
)  # fmt: skip
def test_released_config_data_targets_resolve_and_build(relative: str, faces, no_taming: None) -> None:
    data = OmegaConf.load(ROOT / relative).data.params
    for split in ("train", "validation"):
        target = data[split].target
        name = target.rsplit(".", 1)[1]
        assert target in (f"taming.data.faceshq.{name}", f"ldm.data.faceshq.{name}")
        assert get_obj_from_str(target) is getattr(faceshq, name)
        dataset = instantiate_from_config(data[split])
        assert isinstance(dataset, faceshq.FacesBase)
        assert dataset[0]["image"].shape == (256, 256, 3)


def test_every_faceshq_class_is_aliased(no_taming: None) -> None:
    for name in ("FacesBase", "CelebAHQTrain", "CelebAHQValidation", "FFHQTrain", "FFHQValidation", "FacesHQTrain",
                 "FacesHQValidation"):  # fmt: skip
        assert get_obj_from_str(f"taming.data.faceshq.{name}") is getattr(faceshq, name)
    for name in ("ImagePaths", "NumpyPaths", "ConcatDatasetWithIndex"):
        assert get_obj_from_str(f"taming.data.base.{name}") is getattr(faceshq, name)
