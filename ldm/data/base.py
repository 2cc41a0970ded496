"""Shared dataset pieces: the streamed-dataset base class, and image helpers."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset


class Txt2ImgIterableBaseDataset(IterableDataset):
    """An iterable dataset over ``valid_ids`` whose workers each stream a disjoint slice ``sample_ids``.

    ``num_records`` is the total length reported by ``len()``; :func:`ldm.data.datamodule.worker_init_fn`
    assigns each DataLoader worker its slice of ``valid_ids``.
    """

    def __init__(self, num_records: int = 0, valid_ids: Sequence[Any] | None = None, size: int = 256):
        super().__init__()
        self.num_records = num_records
        self.valid_ids = valid_ids
        self.sample_ids = valid_ids
        self.size = size

    def __len__(self) -> int:
        return self.num_records

    @abstractmethod
    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Yield examples for the ids in ``self.sample_ids``."""


def load_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` in RGB mode."""
    with Image.open(path) as image:
        return image.convert("RGB")


def square_crop_box(width: int, height: int, random_crop: bool = False) -> tuple[int, int, int, int]:
    """PIL box ``(left, top, right, bottom)`` of the largest square: centred, or at a random offset (torch RNG)."""
    side = min(width, height)
    if random_crop:
        left = int(torch.randint(0, width - side + 1, ()).item())
        top = int(torch.randint(0, height - side + 1, ()).item())
    else:
        left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def maybe_flip(image: Image.Image, flip_p: float) -> Image.Image:
    """Horizontal flip with probability ``flip_p`` (torch RNG, so DataLoader workers differ); one draw per call
    whatever ``flip_p``, as ``torchvision.transforms.RandomHorizontalFlip``."""
    if torch.rand(1).item() < flip_p:
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def to_model_range(image: Image.Image) -> np.ndarray:
    """``(H, W, 3)`` uint8 image → float32 in [-1, 1]: ``x / 127.5 − 1``."""
    return (np.asarray(image, dtype=np.uint8) / 127.5 - 1.0).astype(np.float32)
