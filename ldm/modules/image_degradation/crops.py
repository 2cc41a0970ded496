"""Crops: to a multiple of the scale factor, of a border, and aligned random LR/HR patches."""

from __future__ import annotations

import random

import numpy as np


def modcrop_np(img: np.ndarray, sf: int) -> np.ndarray:
    """Copy of ``img`` ``(H, W, …)`` cut to ``(H − H mod sf, W − W mod sf, …)`` (top-left part kept)."""
    rows, cols = img.shape[:2]
    return np.copy(img[: rows - rows % sf, : cols - cols % sf, ...])


def modcrop(img_in: np.ndarray, scale: int) -> np.ndarray:
    """:func:`modcrop_np` for ``(H, W)`` or ``(H, W, C)`` images only."""
    if img_in.ndim not in (2, 3):
        raise ValueError(f"modcrop takes an (H, W) or (H, W, C) image, got {img_in.ndim} dims.")
    return modcrop_np(img_in, scale)


def shave(img_in: np.ndarray, border: int = 0) -> np.ndarray:
    """Copy of ``img_in`` ``(H, W, …)`` without ``border`` pixels on each side: ``(H − 2b, W − 2b, …)``."""
    rows, cols = img_in.shape[:2]
    return np.copy(img_in[border : rows - border, border : cols - border])


def random_crop(lq: np.ndarray, hq: np.ndarray, sf: int = 4, lq_patchsize: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Aligned random patches: ``lq[t : t + p, l : l + p]`` and ``hq[sf t : sf (t + p), sf l : sf (l + p)]`` with
    ``p = lq_patchsize`` and ``t``, ``l`` uniform integers (``random.randint``, top first) such that the LQ patch fits.
    """
    rows, cols = lq.shape[:2]
    top = random.randint(0, rows - lq_patchsize)
    left = random.randint(0, cols - lq_patchsize)
    lq_patch = lq[top : top + lq_patchsize, left : left + lq_patchsize, :]
    hq_size = lq_patchsize * sf
    hq_patch = hq[int(top * sf) : int(top * sf) + hq_size, int(left * sf) : int(left * sf) + hq_size, :]
    return lq_patch, hq_patch
