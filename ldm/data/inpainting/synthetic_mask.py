"""Random inpainting masks in the style of LaMa's "large masks": thick polygonal strokes or boxes.

A mask is an ``(H, W)`` float array, 1 where the image is to be painted in. With probability ``p_irr`` it is a
chain of ``n ~ U{min_n_irr, max_n_irr - 1}`` strokes, each from the previous end point in a random direction, of
length ``U{10, max_l_irr - 1}`` and width ``U{5, max_w_irr - 1}`` pixels; otherwise ``n ~ U{min_n_box, max_n_box - 1}``
boxes with sides ``U{min_s_box, max_s_box - 1}`` at least ``marg`` pixels from the border, each square-cornered or
rounded (radius ``U{0, 59}``) with probability ½. All draws come from the given ``numpy.random.RandomState``.
:data:`MASK_MODES` maps the mode names configs use (``256train``, ``256narrow``, ``512train``, ``512train-large``)
to ``make_mask(prng, height, width)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image, ImageDraw

#: Stroke and box ranges of each mode (pixels; the 512 modes are for 512-px training images).
SETTINGS: dict[str, dict[str, float | int | None]] = {
    "256narrow": dict(p_irr=1, min_n_irr=4, max_n_irr=50, max_l_irr=40, max_w_irr=10,
                      min_n_box=None, max_n_box=None, min_s_box=None, max_s_box=None, marg=None),
    "256train": dict(p_irr=0.5, min_n_irr=1, max_n_irr=5, max_l_irr=200, max_w_irr=100,
                     min_n_box=1, max_n_box=4, min_s_box=30, max_s_box=150, marg=10),
    "512train": dict(p_irr=0.5, min_n_irr=1, max_n_irr=5, max_l_irr=450, max_w_irr=250,
                     min_n_box=1, max_n_box=4, min_s_box=30, max_s_box=300, marg=10),
    "512train-large": dict(p_irr=0.5, min_n_irr=1, max_n_irr=5, max_l_irr=450, max_w_irr=400,
                           min_n_box=1, max_n_box=4, min_s_box=75, max_s_box=450, marg=10),
}


def _strokes(draw: ImageDraw.ImageDraw, prng: np.random.RandomState, height: int, width: int, count: int,
             max_length: int, max_width: int) -> None:
    x, y = prng.randint(0, width), prng.randint(0, height)
    for _ in range(count):
        angle = prng.uniform(0, 2 * math.pi)
        length, brush = prng.randint(10, max_length), prng.randint(5, max_width)
        end = (x + length * math.sin(angle), y + length * math.cos(angle))
        draw.line([(x, y), end], fill=255, width=int(brush), joint="curve")
        x, y = end


def _boxes(draw: ImageDraw.ImageDraw, prng: np.random.RandomState, height: int, width: int, count: int,
           min_side: int, max_side: int, margin: int) -> None:
    for _ in range(count):
        box_h, box_w = prng.randint(min_side, max_side), prng.randint(min_side, max_side)
        x0 = prng.randint(margin, max(margin + 1, width - margin - box_w))
        y0 = prng.randint(margin, max(margin + 1, height - margin - box_h))
        corners = [(x0, y0), (x0 + box_w - 1, y0 + box_h - 1)]
        if prng.uniform() < 0.5:
            draw.rectangle(corners, fill=255)
        else:
            draw.rounded_rectangle(corners, radius=int(prng.randint(0, 60)), fill=255)


def gen_large_mask(prng: np.random.RandomState, img_h: int, img_w: int, marg: int | None, p_irr: float,
                   min_n_irr: int, max_n_irr: int, max_l_irr: int, max_w_irr: int, min_n_box: int | None,
                   max_n_box: int | None, min_s_box: int | None, max_s_box: int | None) -> np.ndarray:
    """One ``(img_h, img_w)`` mask in {0, 1} (float64) as the module docstring describes."""
    canvas = Image.new("L", (img_w, img_h), 0)
    draw = ImageDraw.Draw(canvas)
    if prng.uniform() < p_irr:
        _strokes(draw, prng, img_h, img_w, prng.randint(min_n_irr, max_n_irr), max_l_irr, max_w_irr)
    else:
        _boxes(draw, prng, img_h, img_w, prng.randint(min_n_box, max_n_box), min_s_box, max_s_box, marg)
    return (np.asarray(canvas) > 127).astype(np.float64)


MASK_MODES: dict[str, Callable[[np.random.RandomState, int, int], np.ndarray]] = {
    name: partial(gen_large_mask, **settings) for name, settings in SETTINGS.items()
}
