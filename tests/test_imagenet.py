"""ImageNet datasets over the layout the original code prepares (tiny fake tree, no download)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.data.imagenet import (
    DEGRADATIONS,
    ImageNetSRTrain,
    ImageNetSRValidation,
    ImageNetTrain,
    ImageNetValidation,
    area_resample_rows,
    area_resize,
    str_to_indices,
)
from ldm.util import ConfigError, instantiate_from_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "autoencoder").glob("autoencoder_kl_*.yaml"))
#: (height, width) of the fake images: landscape, portrait, square.
SHAPES = ((40, 60), (72, 48), (50, 50))


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


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """``<tmp>`` as ``XDG_CACHE_HOME``: ``autoencoders/data/ILSVRC2012_{train,validation}`` with noise PNGs."""
    generator = np.random.default_rng(0)
    for name in ("ILSVRC2012_train", "ILSVRC2012_validation"):
        root = tmp_path / "autoencoders" / "data" / name
        for k, (synset, shape) in enumerate(zip(("n01", "n01", "n02"), SHAPES, strict=True)):
            (root / "data" / synset).mkdir(parents=True, exist_ok=True)
            pixels = generator.integers(0, 256, (*shape, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "data" / synset / f"{synset}_{k}.JPEG", format="PNG")
        (root / "synset_human.txt").write_text("n01 goldfish\nn02 great white shark\n")
    return tmp_path


def data_root(cache: Path) -> str:
    return str(cache / "autoencoders" / "data")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Inverse of ``x / 127.5 - 1``; exact because every value is on that grid."""
    return np.rint((image + 1.0) * 127.5).astype(np.uint8)


def test_area_resample_rows_closed_forms() -> None:
    a, b, c = 30.0, 90.0, 210.0
    x = np.array([a, b, c])
    np.testing.assert_allclose(area_resample_rows(x, 2), [(2 * a + b) / 3, (b + 2 * c) / 3])
    np.testing.assert_allclose(area_resample_rows(x[:2], 3), [a, (a + b) / 2, b])
    np.testing.assert_allclose(area_resample_rows(x[:2], 4), [a, a, b, b])
    ramp = np.random.default_rng(0).random((517, 2))
    for n_out in (256, 700):  # shrinking and enlarging keep the mean
        np.testing.assert_allclose(area_resample_rows(ramp, n_out).mean(axis=0), ramp.mean(axis=0))


def test_area_resize_is_block_mean_and_replication() -> None:
    image = np.random.default_rng(1).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    blocks = image.reshape(2, 4, 3, 4, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_array_equal(area_resize(image, 2, 3), np.rint(blocks).astype(np.uint8))
    np.testing.assert_array_equal(area_resize(image, 16, 24), image.repeat(2, axis=0).repeat(2, axis=1))


def test_cv_degradations_closed_forms() -> None:
    image = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(DEGRADATIONS["cv_nearest"](image, 4, 4), image[::4, ::4])
    np.testing.assert_array_equal(DEGRADATIONS["cv_area"](image, 4, 4), area_resize(image, 4, 4))
    # Half-pixel centres: output k samples source 4k + 1.5, the mean of pixels 4k + 1 and 4k + 2 in each axis.
    pairs = image.astype(np.float64)[1::4][:, 1::4] + image[2::4][:, 1::4] + image[1::4][:, 2::4] + image[2::4][:, 2::4]
    np.testing.assert_array_equal(DEGRADATIONS["cv_bilinear"](image, 4, 4), np.rint(pairs / 4).astype(np.uint8))
    flat = np.full((16, 16, 3), 77, dtype=np.uint8)
    for name in ("cv_bicubic", "cv_lanczos"):
        np.testing.assert_array_equal(DEGRADATIONS[name](flat, 4, 4), flat[:4, :4])


def test_sr_example_keys_shapes_and_ranges(cache: Path) -> None:
    dataset = ImageNetSRTrain(size=16, degradation="pil_nearest", data_root=data_root(cache))
    assert len(dataset) == 3 and dataset.LR_size == 4 and not dataset.center_crop
    example = dataset[2]
    assert set(example) == {"image", "LR_image", "relpath", "synsets", "class_label", "human_label", "file_path_"}
    assert example["relpath"] == "n02/n02_2.JPEG" and example["class_label"] == 1
    assert example["human_label"] == "great white shark"
    for key, side in (("image", 16), ("LR_image", 4)):
        value = example[key]
        assert value.shape == (side, side, 3) and value.dtype == np.float32
        assert value.min() >= -1.0 and value.max() <= 1.0 and value.std() > 0.05
        np.testing.assert_allclose((value + 1.0) * 127.5, to_uint8(value), atol=1e-4)


@pytest.mark.parametrize("name", [f"pil_{f}" for f in ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")])
def test_lr_is_pil_resize_of_hr(cache: Path, name: str) -> None:
    example = ImageNetSRValidation(size=16, degradation=name, data_root=data_root(cache))[0]
    resample = getattr(Image.Resampling, name.removeprefix("pil_").upper())
    expected = Image.fromarray(to_uint8(example["image"])).resize((4, 4), resample=resample)
    np.testing.assert_array_equal(to_uint8(example["LR_image"]), np.asarray(expected))


def test_crop_box_bounds(cache: Path) -> None:
    dataset = ImageNetSRTrain(size=8, degradation="pil_box", min_crop_f=0.3, max_crop_f=0.9,
                              data_root=data_root(cache))
    torch.manual_seed(0)
    boxes = [dataset.crop_box(40, 60) for _ in range(300)]
    sides = np.array([side for _, _, side in boxes])
    assert sides.min() >= int(40 * 0.3) and sides.max() <= int(40 * 0.9) and sides.max() - sides.min() > 15
    assert all(top >= 0 and left >= 0 and top + side <= 40 and left + side <= 60 for top, left, side in boxes)
    assert len({(top, left) for top, left, _ in boxes}) > 50
    dataset.center_crop = True
    assert all((top, left) == ((40 - side) // 2, (60 - side) // 2) for top, left, side in
               (dataset.crop_box(40, 60) for _ in range(20)))


def test_hr_is_area_resized_crop(cache: Path) -> None:
    dataset = ImageNetSRTrain(size=32, degradation="cv_area", data_root=data_root(cache))
    torch.manual_seed(3)
    top, left, side = dataset.crop_box(*SHAPES[1])
    torch.manual_seed(3)
    example = dataset[1]
    pixels = np.asarray(Image.open(example["file_path_"]))
    expected = area_resize(pixels[top : top + side, left : left + side], 32, 32)
    np.testing.assert_array_equal(to_uint8(example["image"]), expected)
    np.testing.assert_array_equal(to_uint8(example["LR_image"]), area_resize(expected, 8, 8))


def test_validation_center_crop_is_deterministic(cache: Path) -> None:
    # As in the original, ImageNetSRValidation crops at random unless random_crop=False, and the crop side is
    # random unless min_crop_f == max_crop_f.
    assert not ImageNetSRValidation(size=8, degradation="pil_nearest", data_root=data_root(cache)).center_crop
    dataset = ImageNetSRValidation(size=8, degradation="pil_bicubic", random_crop=False, min_crop_f=0.6,
                                   max_crop_f=0.6, data_root=data_root(cache))
    first, second = dataset[0], dataset[0]
    np.testing.assert_array_equal(first["image"], second["image"])
    np.testing.assert_array_equal(first["LR_image"], second["LR_image"])
    pixels = np.asarray(Image.open(first["file_path_"]))  # 40 x 60: side int(40 * 0.6) = 24, offsets (8, 18)
    np.testing.assert_array_equal(to_uint8(first["image"]), area_resize(pixels[8:32, 18:42], 8, 8))


def test_hr_indices_file(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         caplog: pytest.LogCaptureFixture) -> None:
    index = tmp_path / "indices.txt"
    index.write_text("2\n0\n")
    dataset = ImageNetSRTrain(size=8, degradation="pil_nearest", data_root=data_root(cache), hr_indices=str(index))
    assert len(dataset) == 2 and dataset[0]["relpath"] == "n02/n02_2.JPEG" and dataset[1]["relpath"] == "n01/n01_0.JPEG"
    index.write_text("3\n")
    with pytest.raises(ConfigError, match="outside the 3 images"):
        ImageNetSRTrain(size=8, degradation="pil_nearest", data_root=data_root(cache), hr_indices=str(index))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "imagenet_val_hr_indices.p").write_bytes(b"not read")
    with caplog.at_level(logging.WARNING, logger="ldm.data.imagenet"):
        assert len(ImageNetSRValidation(size=8, degradation="pil_nearest", data_root=data_root(cache))) == 3
    assert "not unpickled" in caplog.text
    (tmp_path / "data" / "imagenet_val_hr_indices.txt").write_text("1")
    assert len(ImageNetSRValidation(size=8, degradation="pil_nearest", data_root=data_root(cache))) == 1


@pytest.mark.parametrize("name", ["bsrgan", "bsrgan_light"])
def test_bsrgan_lr_image_is_the_pipeline_output(cache: Path, name: str) -> None:
    """``LR_image`` is ``degradation_bsrgan_variant(image, sf=downscale_f)["image"]`` of the HR image, which the
    numpy / ``random`` seeds reproduce."""
    from ldm.modules.image_degradation import bsrgan, bsrgan_light

    module = {"bsrgan": bsrgan, "bsrgan_light": bsrgan_light}[name]
    dataset = ImageNetSRValidation(size=32, degradation=name, downscale_f=4, data_root=data_root(cache))
    for seed in (0, 1):
        np.random.seed(seed)
        random.seed(seed)
        example = dataset[2]
        low = example["LR_image"]
        assert example["image"].shape == (32, 32, 3) and low.shape == (8, 8, 3) and low.dtype == np.float32
        assert -1.0 <= low.min() and low.max() <= 1.0
        np.random.seed(seed)
        random.seed(seed)
        expected = module.degradation_bsrgan_variant(to_uint8(example["image"]), sf=4)["image"]
        np.testing.assert_array_equal(to_uint8(low), expected)
    halved = ImageNetSRTrain(size=16, degradation=name, downscale_f=2, data_root=data_root(cache))[0]
    assert halved["LR_image"].shape == (8, 8, 3)


def test_sr_parameter_errors(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = data_root(cache)
    with pytest.raises(ConfigError, match="unknown degradation 'pil_area'.*bsrgan_light"):
        ImageNetSRTrain(size=16, degradation="pil_area", data_root=root)
    with pytest.raises(ConfigError, match="multiple of downscale_f"):
        ImageNetSRTrain(size=18, degradation="pil_nearest", data_root=root)
    with pytest.raises(ConfigError, match="max_crop_f"):
        ImageNetSRTrain(size=16, degradation="pil_nearest", max_crop_f=1.5, data_root=root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="ILSVRC2012_validation.*does not download"):
        ImageNetSRValidation(size=16, degradation="pil_nearest")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_autoencoder_config_data_instantiates(cache: Path, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    datamodule = instantiate_from_config(OmegaConf.load(path).data)
    datamodule.setup("fit")
    assert set(datamodule.datasets) == {"train", "validation"}
    for split in ("train", "validation"):
        example = datamodule.datasets[split][0]
        assert example["image"].shape == (256, 256, 3) and example["LR_image"].shape == (64, 64, 3)
        pil = Image.fromarray(to_uint8(example["image"])).resize((64, 64), resample=Image.Resampling.NEAREST)
        np.testing.assert_array_equal(to_uint8(example["LR_image"]), np.asarray(pil))
