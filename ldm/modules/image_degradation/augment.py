"""The eight flips/rotations of the dihedral group D4 as data augmentation, for numpy images and tensors."""

from __future__ import annotations

import random

import numpy as np
import torch

#: ``mode → (k, flip)``: rotate by ``k · 90°`` counter-clockwise in the (H, W) plane, then flip upside down if
#: ``flip``. Modes 0 … 7 cover the eight elements of D4.
ROTATE_THEN_FLIP = {0: (0, False), 1: (1, True), 2: (0, True), 3: (3, False),
                    4: (2, True), 5: (1, False), 6: (2, False), 7: (3, True)}


def _rotate_then_flip(mode: int) -> tuple[int, bool]:
    if mode not in ROTATE_THEN_FLIP:
        raise ValueError(f"augmentation mode must be an integer in 0..7, got {mode!r}.")
    return ROTATE_THEN_FLIP[mode]


def augment_img(img: np.ndarray, mode: int = 0) -> np.ndarray:
    """``(H, W[, C])`` → ``flipud(rot90(img, k))`` (flip only if the mode has one), see :data:`ROTATE_THEN_FLIP`."""
    turns, flip = _rotate_then_flip(mode)
    out = np.rot90(img, k=turns)
    return np.flipud(out) if flip else out


def augment_img_tensor4(img: torch.Tensor, mode: int = 0) -> torch.Tensor:
    """:func:`augment_img` for ``(B, C, H, W)`` tensors (rotation in dims 2, 3; flip of dim 2)."""
    turns, flip = _rotate_then_flip(mode)
    out = img.rot90(turns, [2, 3])
    return out.flip([2]) if flip else out


def augment_img_tensor(img: torch.Tensor, mode: int = 0) -> torch.Tensor:
    """:func:`augment_img` for tensors whose last two dims are (H, W): ``(H, W)``, ``(C, H, W)``, ``(B, C, H, W)``."""
    turns, flip = _rotate_then_flip(mode)
    out = img.rot90(turns, [-2, -1])
    return out.flip([-2]) if flip else out


def augment_img_np3(img: np.ndarray, mode: int = 0) -> np.ndarray:
    """``(H, W, C)``: mode bits ``4 · h + 2 · v + t`` → mirror left-right if ``h``, upside down if ``v``, then swap
    H and W if ``t``."""
    if mode not in range(8):
        raise ValueError(f"augment_img_np3: mode must be an integer in 0..7, got {mode!r}.")
    out = img[:, ::-1, :] if mode & 4 else img
    out = out[::-1, :, :] if mode & 2 else out
    return out.transpose(1, 0, 2) if mode & 1 else out


def augment_imgs(img_list: list[np.ndarray], hflip: bool = True, rot: bool = True) -> list[np.ndarray]:
    """Apply one random augmentation to every ``(H, W, C)`` image of ``img_list``: a left-right mirror (if
    ``hflip``), an upside-down flip and an H/W transpose (if ``rot``), each with probability ½ from ``random``
    (a draw is made only for an enabled option, in that order)."""
    mirror = hflip and random.random() < 0.5
    upside_down = rot and random.random() < 0.5
    transpose = rot and random.random() < 0.5
    mode = 4 * mirror + 2 * upside_down + transpose
    return [augment_img_np3(img, mode) for img in img_list]
