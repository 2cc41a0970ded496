"""An independent reader of shape images: decides kind, colour, size and position from pixels alone.

It shares nothing with the models, so it can judge whether generated images follow their prompts:
- foreground = pixels whose colour is far from the white background, weighted by how far (soft coverage);
- colour = the palette entry nearest to the coverage-weighted mean colour of the solid foreground;
- kind = filled fraction of the soft bounding box, whose sides are the sums of the column and row maxima of the
  coverage (ideally circle π/4 ≈ 0.79, square 1, triangle 1/2); the two thresholds are the midpoints between the
  kinds' fractions as this very measure reads them on the renderer's own drawings at the image's resolution (at
  32 px anti-aliasing lifts a small triangle to ≈ 0.58), never on model output;
- size = the bounding-box side against the midpoint of the two drawn sides; position = the nearest position centre to
  the centroid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from ldm.data.shapes import BACKGROUND, COLORS, KINDS, POSITIONS, SIZES, ShapeSpec, render

_BACKGROUND = np.asarray(BACKGROUND, dtype=np.float64)
_PALETTE = {name: np.asarray(rgb, dtype=np.float64) for name, rgb in COLORS.items()}
Palette = Mapping[str, Sequence[int]]


def _as_palette(palette: Palette | None) -> dict[str, np.ndarray]:
    """``palette`` (colour name → RGB) as float arrays; None: the dataset's five colours."""
    if palette is None:
        return _PALETTE
    return {name: np.asarray(rgb, dtype=np.float64) for name, rgb in palette.items()}


def foreground_coverage(image: np.ndarray, palette: Palette | None = None) -> np.ndarray:
    """Soft foreground coverage in [0, 1] of an ``(H, W, 3)`` uint8 image drawn on the white background.

    Each pixel's distance from white is divided by the smallest distance of any palette colour from white, so a
    solid shape pixel has coverage ≈ 1 and an anti-aliased edge pixel its covered fraction. ``palette``: colour
    name → RGB (default: the dataset's ``COLORS``).
    """
    distance = np.linalg.norm(image.astype(np.float64) - _BACKGROUND, axis=-1)
    full = min(np.linalg.norm(rgb - _BACKGROUND) for rgb in _as_palette(palette).values())
    return np.clip(distance / full, 0.0, 1.0)


def box_fill(coverage: np.ndarray) -> float:
    """Area of the (thresholded) soft ``coverage`` over its soft bounding box, whose sides are the sums of the
    column and the row maxima."""
    return float(coverage.sum() / (coverage.max(axis=0).sum() * coverage.max(axis=1).sum()))


def _solid_coverage(image: np.ndarray, palette: Palette | None = None) -> np.ndarray:
    """Foreground coverage with the faint pixels (below 0.2: noise, compression, halos) set to zero."""
    coverage = foreground_coverage(image, palette)
    return np.where(coverage > 0.2, coverage, 0.0)


@lru_cache(maxsize=8)
def kind_thresholds(image_size: int) -> tuple[float, float]:
    """Fill fractions separating triangle | circle | square at ``image_size`` px: the midpoints between the mean
    :func:`box_fill` of each kind, drawn by :func:`ldm.data.shapes.render` in every size and position."""
    means = {}
    for kind in KINDS:
        fills = [box_fill(_solid_coverage(render(ShapeSpec(kind, "red", size, position), image_size)))
                 for size in SIZES for position in POSITIONS]
        means[kind] = float(np.mean(fills))
    triangle, circle, square = means["triangle"], means["circle"], means["square"]
    if not triangle < circle < square:
        raise ValueError(f"at {image_size} px the drawn kinds cannot be told apart by their fill ({means})")
    return (triangle + circle) / 2, (circle + square) / 2


def read_shape(image: np.ndarray, palette: Palette | None = None) -> ShapeSpec | None:
    """The attributes an ``(H, W, 3)`` uint8 image shows, or None when it shows no shape at all; the colour is
    the nearest entry of ``palette`` (colour name → RGB, default the dataset's ``COLORS``)."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    height, width = image.shape[:2]
    coverage = _solid_coverage(image, palette)
    area = coverage.sum()
    if area < 4.0:
        return None
    solid = coverage > 0.5
    ys, xs = np.nonzero(solid)
    if len(xs) == 0:
        return None
    mean_colour = image[solid].astype(np.float64).mean(axis=0)
    colours = _as_palette(palette)
    color = min(colours, key=lambda name: np.linalg.norm(colours[name] - mean_colour))

    fill = box_fill(coverage)
    low, high = kind_thresholds(max(height, width))
    kind = "triangle" if fill < low else "circle" if fill < high else "square"

    grid_y, grid_x = np.mgrid[0:height, 0:width] + 0.5
    cx, cy = (coverage * grid_x).sum() / area / width, (coverage * grid_y).sum() / area / height
    position = min(POSITIONS, key=lambda name: (POSITIONS[name][0] - cx) ** 2 + (POSITIONS[name][1] - cy) ** 2)

    box_side = max(coverage.max(axis=0).sum(), coverage.max(axis=1).sum()) / max(height, width)
    size = "small" if box_side < SIZES["small"] + SIZES["large"] else "large"
    return ShapeSpec(kind=kind, color=color, size=size, position=position)


def attribute_accuracy(images: list[np.ndarray], specs: list[ShapeSpec],
                       palette: Palette | None = None) -> dict[str, float]:
    """Fraction of images whose read attributes equal the intended ones, per attribute and for all four
    (colours read against ``palette``, default the dataset's ``COLORS``)."""
    if len(images) != len(specs) or not images:
        raise ValueError("need the same, non-zero number of images and intended specs")
    keys = ("kind", "color", "size", "position")
    hits = {key: 0 for key in (*keys, "all")}
    for image, spec in zip(images, specs):
        read = read_shape(image, palette)
        if read is None:
            continue
        matches = [getattr(read, key) == getattr(spec, key) for key in keys]
        for key, match in zip(keys, matches):
            hits[key] += match
        hits["all"] += all(matches)
    return {key: count / len(images) for key, count in hits.items()}
