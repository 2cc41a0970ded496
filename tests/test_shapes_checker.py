"""ldm.data.shapes_checker: reads the attributes of shape images from pixels alone."""

import math

import numpy as np
import pytest

from ldm.data.shapes import COLORS, KINDS, POSITIONS, SIZES, ShapesDataset, ShapeSpec, render
from ldm.data.shapes_checker import attribute_accuracy, box_fill, foreground_coverage, kind_thresholds, read_shape


def _uint8(item_image: np.ndarray) -> np.ndarray:
    return np.rint((item_image + 1.0) * 127.5).astype(np.uint8)


@pytest.mark.parametrize("size", [32, 64])
def test_reads_held_out_data_perfectly_even_with_noise(size):
    data = ShapesDataset(size=size, length=300, split="test")
    images = [_uint8(data[i]["image"]) for i in range(len(data))]
    specs = [data.spec(i)[0] for i in range(len(data))]
    assert attribute_accuracy(images, specs)["all"] == 1.0
    rng = np.random.default_rng(0)
    noisy = [np.clip(im + rng.normal(0, 8, im.shape), 0, 255).astype(np.uint8) for im in images]
    assert attribute_accuracy(noisy, specs)["all"] >= 0.99


@pytest.mark.parametrize("size", [24, 32, 48])
def test_kind_thresholds_are_midpoints_of_the_drawn_fills(size):
    low, high = kind_thresholds(size)
    assert 0.5 < low < math.pi / 4 < high < 1.0
    fills = {kind: [box_fill(np.where((c := foreground_coverage(render(ShapeSpec(kind, colour, s, p), size))) > 0.2,
                                      c, 0.0))
                    for colour in COLORS for s in SIZES for p in POSITIONS] for kind in KINDS}
    assert max(fills["triangle"]) < low < min(fills["circle"]) <= max(fills["circle"]) < high < min(fills["square"])
    assert low == pytest.approx((np.mean(fills["triangle"]) + np.mean(fills["circle"])) / 2, abs=0.01)
    assert high == pytest.approx((np.mean(fills["circle"]) + np.mean(fills["square"])) / 2, abs=0.01)


def test_wrong_intended_attributes_score_at_chance():
    data = ShapesDataset(size=32, length=600, split="test")
    images = [_uint8(data[i]["image"]) for i in range(len(data))]
    specs = [data.spec(i)[0] for i in range(len(data))]
    shuffled = specs[1:] + specs[:1]
    accuracy = attribute_accuracy(images, shuffled)
    assert accuracy["kind"] == pytest.approx(1 / len(KINDS), abs=0.08)
    assert accuracy["all"] < 0.05


def test_blank_image_reads_as_nothing_and_counts_as_a_miss():
    blank = np.full((32, 32, 3), 255, dtype=np.uint8)
    assert read_shape(blank) is None
    spec = ShapeSpec("circle", "red", "large", "center")
    assert attribute_accuracy([blank, render(spec, 32)], [spec, spec])["all"] == 0.5


def test_rejects_non_rgb_input():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        read_shape(np.zeros((32, 32), dtype=np.uint8))
