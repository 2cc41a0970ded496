"""ImageFolderDataset: recursive scan, labels from sub-folders, captions, crops, corrupt and empty folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data.image_folder import ImageFolderDataset
from ldm.util import ConfigError


def save_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def solid(height: int, width: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (height, width, 3)).copy()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/cats/a.png, root/cats/nested/b.png (side-car caption), root/dogs/c.jpg."""
    root = tmp_path / "images"
    save_image(root / "cats" / "a.png", solid(8, 8, (255, 0, 0)))
    save_image(root / "cats" / "nested" / "b.png", solid(8, 8, (0, 255, 0)))
    (root / "cats" / "nested" / "b.txt").write_text("a green square\n")
    save_image(root / "dogs" / "c.png", solid(8, 8, (0, 0, 255)))
    return root


def test_recursive_scan_labels_and_batch_format(tree: Path) -> None:
    dataset = ImageFolderDataset(str(tree), size=8, flip_p=0.0)
    assert len(dataset) == 3
    assert dataset.class_names == ["cats", "dogs"]
    items = {Path(item["file_path_"]).name: item for item in (dataset[i] for i in range(3))}
    assert [items[n]["class_label"] for n in ("a.png", "b.png", "c.png")] == [0, 0, 1]
    assert items["c.png"]["human_label"] == "dogs"
    image = items["a.png"]["image"]
    assert image.dtype == np.float32 and image.shape == (8, 8, 3)
    np.testing.assert_allclose(image, np.broadcast_to([1.0, -1.0, -1.0], (8, 8, 3)))
    assert items["b.png"]["caption"] == items["b.png"]["txt"] == "a green square"
    assert items["a.png"]["caption"] == ""


def test_images_in_root_without_subfolders_get_label_zero(tmp_path: Path) -> None:
    save_image(tmp_path / "x.png", solid(4, 4, (0, 0, 0)))
    save_image(tmp_path / "y.png", solid(4, 4, (255, 255, 255)))
    dataset = ImageFolderDataset(str(tmp_path), size=4)
    assert [dataset[i]["class_label"] for i in range(2)] == [0, 0]
    np.testing.assert_allclose(dataset[1]["image"], 1.0)


def test_captions_file_tsv_and_json(tree: Path, tmp_path: Path) -> None:
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("cats/a.png\ta red square\ncats/nested/b.png\tgreen, from the file\n")
    dataset = ImageFolderDataset(str(tree), size=8, captions=str(tsv))
    by_name = {Path(dataset[i]["file_path_"]).name: dataset[i]["caption"] for i in range(3)}
    assert by_name == {"a.png": "a red square", "b.png": "green, from the file", "c.png": ""}
    js = tmp_path / "captions.json"
    js.write_text(json.dumps({"dogs/c.png": "a blue square"}))
    dataset = ImageFolderDataset(str(tree), size=8, captions=str(js))
    by_name = {Path(dataset[i]["file_path_"]).name: dataset[i]["txt"] for i in range(3)}
    assert by_name == {"a.png": "", "b.png": "a green square", "c.png": "a blue square"}


def test_center_crop_resize_and_flip(tmp_path: Path) -> None:
    """An 8x16 image: black left quarter, white middle half, red right quarter → the centre crop is white."""
    array = solid(8, 16, (0, 0, 0))
    array[:, 4:12] = 255
    array[:, 12:] = (255, 0, 0)
    save_image(tmp_path / "wide.png", array)
    np.testing.assert_allclose(ImageFolderDataset(str(tmp_path), size=8, flip_p=0.0)[0]["image"], 1.0)
    gradient = np.repeat(np.arange(8, dtype=np.uint8)[None, :, None] * 30, 8, axis=0).repeat(3, axis=2)
    save_image(tmp_path / "wide.png", gradient)
    flipped = ImageFolderDataset(str(tmp_path), size=None, flip_p=1.0)[0]["image"]
    np.testing.assert_allclose(flipped, gradient[:, ::-1] / 127.5 - 1.0, atol=1e-6)
    halved = ImageFolderDataset(str(tmp_path), size=4, flip_p=0.0)[0]["image"]
    assert halved.shape == (4, 4, 3) and np.all(np.diff(halved[0, :, 0]) > 0)


def test_random_crop_is_a_window_of_the_source(tmp_path: Path) -> None:
    columns = np.arange(16, dtype=np.uint8) * 15
    array = np.repeat(np.repeat(columns[None, :, None], 8, axis=0), 3, axis=2)
    save_image(tmp_path / "wide.png", array)
    dataset = ImageFolderDataset(str(tmp_path), size=8, random_crop=True, flip_p=0.0)
    torch.manual_seed(0)
    starts = set()
    for _ in range(12):
        row = np.rint((dataset[0]["image"][0, :, 0] + 1.0) * 127.5)
        start = int(row[0]) // 15
        np.testing.assert_array_equal(row, columns[start : start + 8])
        starts.add(start)
    assert len(starts) > 1


def test_corrupt_images_are_skipped_with_a_counted_warning(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tree / "dogs" / "broken.png").write_bytes(b"this is not a png")
    good = (tree / "dogs" / "c.png").read_bytes()
    (tree / "dogs" / "truncated.png").write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="ldm.data.image_folder"):
        dataset = ImageFolderDataset(str(tree), size=8)
    assert len(dataset) == 3 and dataset.num_skipped == 2
    assert "skipped 2 unreadable image(s)" in caplog.text and "broken.png" in caplog.text


def test_corrupt_image_raises_when_asked(tree: Path) -> None:
    (tree / "dogs" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ConfigError, match=r"broken\.png.*skip_corrupt"):
        ImageFolderDataset(str(tree), size=8, skip_corrupt=False)


def test_empty_or_missing_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=f"{empty}.*no readable images"):
        ImageFolderDataset(str(empty))
    with pytest.raises(ConfigError, match="does not exist"):
        ImageFolderDataset(str(tmp_path / "missing"))
