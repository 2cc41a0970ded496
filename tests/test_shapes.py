"""ldm.data.shapes: the embedded captioned-shapes dataset is deterministic and draws what its caption says."""

import math

import numpy as np
import pytest

from ldm.data.shapes import COLORS, KINDS, POSITIONS, ShapesDataset, ShapeSpec, render, shape_mask


def test_items_are_deterministic_and_splits_differ():
    a, b = ShapesDataset(size=32, length=50), ShapesDataset(size=32, length=50)
    val = ShapesDataset(size=32, length=50, split="validation")
    assert all(np.array_equal(a[i]["image"], b[i]["image"]) for i in range(10))
    assert any(not np.array_equal(a[i]["image"], val[i]["image"]) for i in range(10))


def test_item_format_and_caption():
    item = ShapesDataset(size=32, length=4)[3]
    assert item["image"].shape == (32, 32, 3) and item["image"].dtype == np.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    spec = ShapeSpec(item["kind"], item["color"], item["size"], item["position"])
    assert item["caption"] == spec.caption == f"a {spec.size} {spec.color} {spec.kind} at the {spec.position}"
    assert item["class_label"] == KINDS.index(spec.kind) * len(COLORS) + list(COLORS).index(spec.color)


@pytest.mark.parametrize("kind, fraction", [("circle", math.pi / 4), ("square", 1.0), ("triangle", 0.5)])
def test_area_over_bounding_box_matches_geometry(kind, fraction):
    radius = 20.0
    coverage = shape_mask(kind, 64, (32.0, 32.0), radius)
    assert coverage.sum() / (2 * radius) ** 2 == pytest.approx(fraction, rel=0.02)


def _coverage_by_definition(kind: str, size: int, center: tuple[float, float], radius: float) -> np.ndarray:
    """Coverage straight from the definition: the inside test at 4x4 sample points per pixel, averaged."""
    coords = (np.arange(4 * size) + 0.5) / 4
    x, y = np.meshgrid(coords, coords, indexing="xy")
    (cx, cy), inside = center, None
    if kind == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    elif kind == "square":
        inside = (np.abs(x - cx) <= radius) & (np.abs(y - cy) <= radius)
    else:
        inside = (y >= cy - radius) & (y <= cy + radius) & (np.abs(x - cx) <= (y - (cy - radius)) / 2)
    return inside.reshape(size, 4, size, 4).mean(axis=(1, 3))


@pytest.mark.parametrize("size", [32, 48])
def test_shape_mask_is_the_supersampled_coverage(size):
    rng = np.random.default_rng(size)
    for kind in KINDS:
        for _ in range(20):
            center = tuple(rng.uniform(0.2 * size, 0.8 * size, size=2).tolist())
            radius = float(rng.uniform(2.0, 0.3 * size))
            np.testing.assert_array_equal(
                shape_mask(kind, size, center, radius), _coverage_by_definition(kind, size, center, radius)
            )


def test_colour_and_position_of_the_drawn_shape():
    spec = ShapeSpec("square", "blue", "large", "bottom right")
    image = render(spec, 32)
    assert tuple(image[23, 23]) == COLORS["blue"]
    assert tuple(image[2, 2]) == (255, 255, 255)
    mask = (image != 255).any(-1)
    ys, xs = np.nonzero(mask)
    fx, fy = POSITIONS["bottom right"]
    assert xs.mean() == pytest.approx(fx * 32, abs=0.6) and ys.mean() == pytest.approx(fy * 32, abs=0.6)


def test_every_attribute_value_occurs():
    data = ShapesDataset(size=32, length=400)
    seen = {key: {data[i][key] for i in range(len(data))} for key in ("kind", "color", "size", "position")}
    assert seen["kind"] == set(KINDS) and seen["color"] == set(COLORS) and len(seen["position"]) == 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(split="holdout")
    with pytest.raises(IndexError):
        ShapesDataset(length=2)[2]
