"""LSUN churches / bedrooms / cats over the ``data/lsun`` on-disk layout (no download).

``data/lsun/<file list>.txt`` lists image paths relative to ``data/lsun/<category>/`` (paths relative to the
working directory). Each example: ``{"image": (size, size, 3) float32 in [-1, 1],
"relative_file_path_": str, "file_path_": str}``; preprocessing is the score-sde one: centre crop to a
square, resize with ``interpolation``, horizontal flip with ``flip_p``.
"""

from __future__ import annotations

import os
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from ldm.data.base import load_rgb, maybe_flip, square_crop_box, to_model_range
from ldm.util import ConfigError

INTERPOLATIONS = {
    "linear": Image.Resampling.BILINEAR,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class LSUNBase(Dataset):
    """Images listed in ``txt_file`` (one relative path a line) under ``data_root``."""

    def __init__(
        self, txt_file: str, data_root: str, size: int | None = None, interpolation: str = "bicubic",
        flip_p: float = 0.5,
    ):
        if not os.path.isfile(txt_file):
            raise ConfigError(
                f"LSUN file list {txt_file!r} not found: put the list of image paths (relative to {data_root!r}) "
                "there (the data/lsun/ layout), or train on your own images with "
                "ldm.data.image_folder.ImageFolderDataset."
            )
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation {interpolation!r} unknown; use one of {sorted(INTERPOLATIONS)}.")
        self.data_paths = txt_file
        self.data_root = data_root
        with open(txt_file, encoding="utf-8") as handle:
            self.image_paths = handle.read().splitlines()
        self.labels = {
            "relative_file_path_": list(self.image_paths),
            "file_path_": [os.path.join(data_root, p) for p in self.image_paths],
        }
        self.size = size
        self.interpolation = INTERPOLATIONS[interpolation]
        self.flip_p = flip_p

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = {key: values[i] for key, values in self.labels.items()}
        image = load_rgb(example["file_path_"])
        image = image.crop(square_crop_box(*image.size))
        if self.size is not None:
            image = image.resize((self.size, self.size), resample=self.interpolation)
        example["image"] = to_model_range(maybe_flip(image, self.flip_p))
        return example


class LSUNChurchesTrain(LSUNBase):
    def __init__(self, **kwargs: Any):
        super().__init__(txt_file="data/lsun/church_outdoor_train.txt", data_root="data/lsun/churches", **kwargs)


class LSUNChurchesValidation(LSUNBase):
    def __init__(self, flip_p: float = 0.0, **kwargs: Any):
        super().__init__(txt_file="data/lsun/church_outdoor_val.txt", data_root="data/lsun/churches",
                         flip_p=flip_p, **kwargs)


class LSUNBedroomsTrain(LSUNBase):
    def __init__(self, **kwargs: Any):
        super().__init__(txt_file="data/lsun/bedrooms_train.txt", data_root="data/lsun/bedrooms", **kwargs)


class LSUNBedroomsValidation(LSUNBase):
    def __init__(self, flip_p: float = 0.0, **kwargs: Any):
        super().__init__(txt_file="data/lsun/bedrooms_val.txt", data_root="data/lsun/bedrooms",
                         flip_p=flip_p, **kwargs)


class LSUNCatsTrain(LSUNBase):
    def __init__(self, **kwargs: Any):
        super().__init__(txt_file="data/lsun/cat_train.txt", data_root="data/lsun/cats", **kwargs)


class LSUNCatsValidation(LSUNBase):
    def __init__(self, flip_p: float = 0.0, **kwargs: Any):
        super().__init__(txt_file="data/lsun/cat_val.txt", data_root="data/lsun/cats", flip_p=flip_p, **kwargs)
