"""An independent reader of shape images: decides kind, colour, size and position from pixels alone.

It shares nothing with the models, so it can judge whether generated images follow their prompts:
- foreground = pixels whose colour is far from the white background, weighted by how far (soft coverage);
- colour = the palette entry nearest to the coverage-weighted mean colour of the solid foreground;
- kind = filled fraction of the soft bounding box, whose sides are the sums of the column and row maxima of the
  coverage (circle π/4 ≈ 0.79, square 1, triangle 1/2);
- size = the bounding-box side against the midpoint of the two drawn sides; position = the nearest position centre to
  the centroid.
"""

from __future__ import annotations

import math

import numpy as np

from ldm.data.shapes import BACKGROUND, COLORS, POSITIONS, SIZES, ShapeSpec

_BACKGROUND = np.asarray(BACKGROUND, dtype=np.float64)
_PALETTE = {name: np.asarray(rgb, dtype=np.float64) for name, rgb in COLORS.items()}
#: Bounding-box fill fractions separating triangle (0.5) | circle (0.785) | square (1.0).
_KIND_THRESHOLDS = ((0.5 + math.pi / 4) / 2, (math.pi / 4 + 1.0) / 2)


def foreground_coverage(image: np.ndarray) -> np.ndarray:
    """Soft foreground coverage in [0, 1] of an ``(H, W, 3)`` uint8 image drawn on the white background.

    Each pixel's distance from white is divided by the smallest distance of any palette colour from white, so a
    solid shape pixel has coverage ≈ 1 and an anti-aliased edge pixel its covered fraction.
    """
    distance = np.linalg.norm(image.astype(np.float64) - _BACKGROUND, axis=-1)
    full = min(np.linalg.norm(rgb - _BACKGROUND) for rgb in _PALETTE.values())
    return np.clip(distance / full, 0.0, 1.0)


def read_shape(image: np.ndarray) -> ShapeSpec | None:
    """The attributes an ``(H, W, 3)`` uint8 image shows, or None when it shows no shape at all."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    height, width = image.shape[:2]
    coverage = foreground_coverage(image)
    coverage = np.where(coverage > 0.2, coverage, 0.0)
    area = coverage.sum()
    if area < 4.0:
        return None
    solid = coverage > 0.5
    ys, xs = np.nonzero(solid)
    if len(xs) == 0:
        return None
    mean_colour = image[solid].astype(np.float64).mean(axis=0)
    color = min(_PALETTE, key=lambda name: np.linalg.norm(_PALETTE[name] - mean_colour))

    box_width, box_height = coverage.max(axis=0).sum(), coverage.max(axis=1).sum()
    fill = area / (box_width * box_height)
    kind = "triangle" if fill < _KIND_THRESHOLDS[0] else "circle" if fill < _KIND_THRESHOLDS[1] else "square"

    grid_y, grid_x = np.mgrid[0:height, 0:width] + 0.5
    cx, cy = (coverage * grid_x).sum() / area / width, (coverage * grid_y).sum() / area / height
    position = min(POSITIONS, key=lambda name: (POSITIONS[name][0] - cx) ** 2 + (POSITIONS[name][1] - cy) ** 2)

    box_side = max(box_width, box_height) / max(height, width)
    size = "small" if box_side < SIZES["small"] + SIZES["large"] else "large"
    return ShapeSpec(kind=kind, color=color, size=size, position=position)


def attribute_accuracy(images: list[np.ndarray], specs: list[ShapeSpec]) -> dict[str, float]:
    """Fraction of images whose read attributes equal the intended ones, per attribute and for all four."""
    if len(images) != len(specs) or not images:
        raise ValueError("need the same, non-zero number of images and intended specs")
    keys = ("kind", "color", "size", "position")
    hits = {key: 0 for key in (*keys, "all")}
    for image, spec in zip(images, specs):
        read = read_shape(image)
        if read is None:
            continue
        matches = [getattr(read, key) == getattr(spec, key) for key in keys]
        for key, match in zip(keys, matches):
            hits[key] += match
        hits["all"] += all(matches)
    return {key: count / len(images) for key, count in hits.items()}
