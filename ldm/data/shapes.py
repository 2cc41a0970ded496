"""Procedurally generated captioned shapes: an embedded dataset that needs no download.

Every item is a filled circle, square or triangle of one of five colours, small or large, placed in one of five
positions on a white background, with the caption that says so ("a small red circle at the top left"). Items are a
pure function of ``(seed, split, index)``, so every run and every worker sees the same data. Edges are
anti-aliased by rendering at 4x and averaging, which keeps the images natural for a convolutional autoencoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

KINDS = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 190),
}
#: Colours the default dataset never draws, for fine-tuning experiments (``ShapesDataset(colours=...)``).
EXTRA_COLORS = {"orange": (250, 120, 20)}
#: Size name → half the side of the shape's bounding box, as a fraction of the image side (at 32 px: 10 and 16 px
#: sides, so that a small triangle still spans 3x3 cells of an f=4 latent).
SIZES = {"small": 0.16, "large": 0.25}
#: Position name → centre of the shape as a fraction of the image side (x, y).
POSITIONS = {
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}
BACKGROUND = (255, 255, 255)
SPLIT_OFFSETS = {"train": 0, "validation": 1, "test": 2}
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """The attributes of one image; ``caption`` is the sentence a text-conditional model is given."""

    kind: str
    color: str
    size: str
    position: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.color} {self.kind} at the {self.position}"

    @property
    def class_label(self) -> int:
        """Kind and colour as one class index in ``[0, len(KINDS) * len(COLORS))``."""
        return KINDS.index(self.kind) * len(COLORS) + list(COLORS).index(self.color)


def shape_mask(kind: str, size: int, center: tuple[float, float], radius: float) -> np.ndarray:
    """Coverage in [0, 1] of a filled shape on a ``(size, size)`` pixel grid, anti-aliased by 4x supersampling.

    ``radius`` is half the side of the shape's bounding box, in pixels. Area of the shape over its bounding box:
    circle π/4, square 1, triangle 1/2.
    """
    fine = size * _SUPERSAMPLE
    coords = (np.arange(fine, dtype=np.float64) + 0.5) / _SUPERSAMPLE
    x, y = coords[None, :], coords[:, None]  # sample grid by broadcasting: row vector x, column vector y
    cx, cy = center
    if kind == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    elif kind == "square":
        inside = (np.abs(x - cx) <= radius) & (np.abs(y - cy) <= radius)
    elif kind == "triangle":
        depth = y - (cy - radius)
        inside = (depth >= 0) & (depth <= 2 * radius) & (np.abs(x - cx) <= depth / 2)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; use one of {KINDS}")
    return _block_means(inside, _SUPERSAMPLE)


def _block_means(inside: np.ndarray, factor: int) -> np.ndarray:
    """Mean of every ``factor x factor`` block of a boolean ``(n·factor, n·factor)`` array, ``(n, n)`` float64.

    Exact (a count over ``factor²``): the counts are summed as uint8 slices, which holds ``factor² ≤ 255``.
    """
    counts = inside.view(np.uint8)
    columns = sum(counts[:, offset::factor] for offset in range(factor))
    return sum(columns[offset::factor] for offset in range(factor)) / factor**2


def render(spec: ShapeSpec, size: int, jitter: tuple[float, float] = (0.0, 0.0),
           palette: Mapping[str, Sequence[int]] | None = None) -> np.ndarray:
    """The image of ``spec`` as ``(size, size, 3)`` uint8; ``jitter`` shifts the centre, in pixels. ``palette``:
    colour name → RGB (default ``COLORS``)."""
    fx, fy = POSITIONS[spec.position]
    center = (fx * size + jitter[0], fy * size + jitter[1])
    coverage = shape_mask(spec.kind, size, center, SIZES[spec.size] * size)[..., None]
    colour = np.asarray((COLORS if palette is None else palette)[spec.color], dtype=np.float64)
    background = np.asarray(BACKGROUND, dtype=np.float64)
    image = coverage * colour + (1.0 - coverage) * background
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


class ShapesDataset(Dataset):
    """Captioned shapes in the LDM batch format.

    Item: ``{"image": (size, size, 3) float32 in [-1, 1], "caption": str, "class_label": int, "kind", "color",
    "size", "position": str}``. ``split`` selects an independent stream of the same distribution.

    ``colours`` (name → RGB, e.g. ``{**COLORS, **EXTRA_COLORS}``) replaces the five colours drawn, and
    ``colour_weights`` (one per colour, relative) their frequencies; ``class_label`` then counts colours in that
    palette. Left None, the items are exactly those of the default dataset.
    """

    def __init__(self, size: int = 32, length: int = 5000, split: str = "train", seed: int = 0,
                 max_jitter: float = 1.5, colours: Mapping[str, Sequence[int]] | None = None,
                 colour_weights: Sequence[float] | None = None) -> None:
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split {split!r} is unknown; use one of {sorted(SPLIT_OFFSETS)}")
        if size < 16:
            raise ValueError(f"size={size} is too small to draw the shapes; use 16 or more")
        self.size = size
        self.length = length
        self.split = split
        self.seed = seed
        self.max_jitter = max_jitter
        self.colours = dict(COLORS) if colours is None else {str(k): tuple(v) for k, v in dict(colours).items()}
        self.colour_probabilities = _probabilities(colour_weights, len(self.colours))

    def __len__(self) -> int:
        return self.length

    def spec(self, index: int) -> tuple[ShapeSpec, tuple[float, float]]:
        """The attributes and centre jitter of item ``index`` (a pure function of seed, split and index)."""
        rng = np.random.default_rng([self.seed, SPLIT_OFFSETS[self.split], index])
        spec = ShapeSpec(
            kind=KINDS[rng.integers(len(KINDS))],
            color=self._draw_colour(rng),
            size=list(SIZES)[rng.integers(len(SIZES))],
            position=list(POSITIONS)[rng.integers(len(POSITIONS))],
        )
        jitter = tuple(rng.uniform(-self.max_jitter, self.max_jitter, size=2).tolist())
        return spec, jitter

    def _draw_colour(self, rng: np.random.Generator) -> str:
        names = list(self.colours)
        if self.colour_probabilities is None:
            return names[rng.integers(len(names))]
        return names[rng.choice(len(names), p=self.colour_probabilities)]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        spec, jitter = self.spec(index)
        image = render(spec, self.size, jitter, self.colours).astype(np.float32) / 127.5 - 1.0
        return {
            "image": image,
            "caption": spec.caption,
            "class_label": KINDS.index(spec.kind) * len(self.colours) + list(self.colours).index(spec.color),
            "kind": spec.kind,
            "color": spec.color,
            "size": spec.size,
            "position": spec.position,
        }


def _probabilities(weights: Sequence[float] | None, count: int) -> np.ndarray | None:
    """Relative colour weights as probabilities (None: uniform, drawn as the default dataset draws)."""
    if weights is None:
        return None
    values = np.asarray(list(weights), dtype=np.float64)
    if values.shape != (count,) or not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
        raise ValueError(f"colour_weights {list(weights)} must be {count} non-negative numbers (one per colour) "
                         "with a positive sum")
    return values / values.sum()
