"""Datasets over explicit lists of image files (taming-transformers' ``taming/data/base.py`` parts).

- ``ImagePaths``: image files (PNG, JPEG, …) → ``{"image": (size, size, 3) float32 in [-1, 1], "file_path_"}``.
- ``NumpyPaths``: the same over ``.npy`` arrays ``(1, 3, H, W)`` uint8 (how CelebA-HQ is stored).
- ``ConcatDatasetWithIndex``: datasets one after another; item ``i`` is ``(example, index of its dataset)``.

Preprocessing with ``size > 0``: the shorter side is scaled to ``size`` (the longer one to ``round(side · s)``,
``s = size / min(H, W)``) by bilinear interpolation at pixel centres without antialiasing, as OpenCV's
``INTER_LINEAR`` (computed in float, so a value can differ from OpenCV's fixed-point result by one level), then a
``size × size`` window is cut: centred (offsets ``⌊(H − size) / 2⌋``, ``⌊(W − size) / 2⌋``) or, with
``random_crop``, at offsets uniform over every valid position (torch RNG, so DataLoader workers differ).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from ldm.data.base import load_rgb
from ldm.data.imagenet import torch_resize


def crop_offsets(height: int, width: int, crop: int, random_crop: bool) -> tuple[int, int]:
    """``(top, left)`` of a ``crop × crop`` window in an ``(height, width)`` image: centred, or uniform at random."""
    if crop > min(height, width):
        raise ValueError(f"crop size {crop} is larger than the {height}x{width} image; use a crop size <= {height}")
    if not random_crop:
        return (height - crop) // 2, (width - crop) // 2
    top, left = (int(torch.randint(0, extent - crop + 1, ()).item()) for extent in (height, width))
    return top, left


def shorter_side_to(image: np.ndarray, size: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 → shorter side ``size``, aspect ratio kept (each side ``round(side · size / min(H, W))``)."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    if scale == 1.0:
        return image
    return torch_resize(image, round(height * scale), round(width * scale), mode="bilinear")


class ImagePaths(Dataset):
    """The images at ``paths``; with ``size`` (> 0) each is rescaled and cropped to ``size × size`` (module doc)."""

    def __init__(self, paths: Sequence[str], size: int | None = None, random_crop: bool = False) -> None:
        self.size = size
        self.random_crop = random_crop
        self.labels: dict[str, list[Any]] = {"file_path_": list(paths)}
        self._length = len(self.labels["file_path_"])

    def __len__(self) -> int:
        return self._length

    def read_uint8(self, image_path: str) -> np.ndarray:
        """The file as an ``(H, W, 3)`` uint8 RGB array."""
        return np.array(load_rgb(image_path), dtype=np.uint8)

    def preprocess_image(self, image_path: str) -> np.ndarray:
        """The file → ``(size, size, 3)`` (or its own size without ``size``) float32 ``x / 127.5 − 1`` in [-1, 1]."""
        pixels = self.read_uint8(image_path)
        if self.size is not None and self.size > 0:
            pixels = shorter_side_to(pixels, self.size)
            top, left = crop_offsets(*pixels.shape[:2], self.size, self.random_crop)
            pixels = pixels[top : top + self.size, left : left + self.size]
        return (pixels / 127.5 - 1.0).astype(np.float32)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.labels["file_path_"][i]
        return {"image": self.preprocess_image(path), **{key: values[i] for key, values in self.labels.items()}}


class NumpyPaths(ImagePaths):
    """``ImagePaths`` over ``.npy`` files holding one channels-first uint8 RGB image ``(1, 3, H, W)``."""

    def read_uint8(self, image_path: str) -> np.ndarray:
        array = np.load(image_path)
        planar = array[0] if array.ndim == 4 and array.shape[0] == 1 else array
        if planar.ndim != 3 or planar.shape[0] != 3 or array.dtype != np.uint8:
            raise ValueError(
                f"{Path(image_path).name}: expected a uint8 array of shape (1, 3, H, W), got {array.dtype} "
                f"{array.shape}; store each image as np.save(path, rgb_uint8.transpose(2, 0, 1)[None])"
            )
        return np.ascontiguousarray(planar.transpose(1, 2, 0))


class ConcatDatasetWithIndex(ConcatDataset):
    """``datasets`` one after another; item ``i`` → ``(datasets[k][i − start_k], k)``; negative ``i`` counts back."""

    def __getitem__(self, idx: int) -> tuple[Any, int]:
        total = len(self)
        if not -total <= idx < total:
            raise IndexError(f"index {idx} is out of range for {total} examples")
        position = idx % total
        which = bisect.bisect_right(self.cumulative_sizes, position)
        start = self.cumulative_sizes[which - 1] if which > 0 else 0
        return self.datasets[which][position - start], which
