"""The shapes data of the LoRA demo: a colour the default dataset never draws, read back by the checker; the
default dataset and checker unchanged."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ldm.data.shapes import COLORS, EXTRA_COLORS, ShapesDataset, ShapeSpec, render
from ldm.data.shapes_checker import attribute_accuracy, read_shape

#: sha256 of the first 64 train items (image bytes, caption, class label) of ``ShapesDataset(size=32)``, computed
#: with ldm/data/shapes.py before the colour options existed.
DEFAULT_DIGEST = "667d03dc1aae06435ed8256e5fd3197b2c653783552a0158ec6f45176f04f142"
PALETTE = {**COLORS, **EXTRA_COLORS}


def _digest(dataset: ShapesDataset, count: int = 64) -> str:
    digest = hashlib.sha256()
    for index in range(count):
        item = dataset[index]
        digest.update(item["image"].tobytes())
        digest.update(item["caption"].encode())
        digest.update(str(item["class_label"]).encode())
    return digest.hexdigest()


def test_default_dataset_is_bit_identical() -> None:
    assert _digest(ShapesDataset(size=32, length=64)) == DEFAULT_DIGEST
    assert _digest(ShapesDataset(size=32, length=64, colours=COLORS)) == DEFAULT_DIGEST


def test_weighted_palette_draws_the_new_colour_at_its_share() -> None:
    dataset = ShapesDataset(size=32, length=2000, colours=PALETTE, colour_weights=[1, 1, 1, 1, 1, 5])
    colours = [dataset.spec(i)[0].color for i in range(2000)]
    share = colours.count("orange") / len(colours)
    assert 0.46 < share < 0.54
    assert set(colours) == set(PALETTE)
    item = next(dataset[i] for i in range(20) if dataset.spec(i)[0].color == "orange")
    assert "orange" in item["caption"] and item["class_label"] % len(PALETTE) == list(PALETTE).index("orange")


def test_only_the_new_colour() -> None:
    dataset = ShapesDataset(size=32, length=50, colours=EXTRA_COLORS)
    assert {dataset.spec(i)[0].color for i in range(50)} == {"orange"}


@pytest.mark.parametrize("weights", [[1, 1], [1, 1, 1, 1, 1, -1], [0, 0, 0, 0, 0, 0]])
def test_bad_colour_weights_are_refused(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="colour_weights"):
        ShapesDataset(colours=PALETTE, colour_weights=weights)


def test_checker_reads_the_new_colour_only_with_the_palette() -> None:
    specs = [ShapeSpec(kind, "orange", "large", "center") for kind in ("circle", "square", "triangle")]
    images = [render(spec, 32, palette=PALETTE) for spec in specs]
    assert attribute_accuracy(images, specs, palette=PALETTE)["all"] == 1.0
    # the default checker knows five colours only: orange reads as one of them, the rest unchanged
    default = [read_shape(image) for image in images]
    assert all(read.color in COLORS for read in default)
    assert [read.kind for read in default] == ["circle", "square", "triangle"]


def test_checker_reads_the_old_colours_the_same_with_the_palette() -> None:
    dataset = ShapesDataset(size=32, length=40, split="test")
    images = [np.asarray((dataset[i]["image"] + 1.0) * 127.5).round().astype(np.uint8) for i in range(40)]
    assert [read_shape(image) for image in images] == [read_shape(image, PALETTE) for image in images]
