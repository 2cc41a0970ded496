"""CelebA-HQ, FFHQ and both together (taming-transformers' ``taming/data/faceshq.py``), from local files.

Paths are relative to the working directory, as in the released configs (no download here):

- ``CelebAHQTrain`` / ``CelebAHQValidation``: lists ``data/celebahqtrain.txt`` / ``data/celebahqvalidation.txt``,
  images under ``data/celebahq`` as ``.npy`` arrays ``(1, 3, H, W)`` uint8;
- ``FFHQTrain`` / ``FFHQValidation``: lists ``data/ffhqtrain.txt`` / ``data/ffhqvalidation.txt``, images under
  ``data/ffhq`` as ``.png`` files.

A file list holds one path a line, relative to the image folder. Examples are ``{"image": (size, size, 3) float32
in [-1, 1], "file_path_": str}``: the shorter side scaled to ``size``, then the centre crop (see
:mod:`ldm.data.image_paths`); ``keys`` keeps only the named entries. ``FacesHQTrain`` / ``FacesHQValidation``
chain CelebA-HQ then FFHQ, add ``"class"`` (0 CelebA-HQ, 1 FFHQ) and, with ``crop_size``, cut a random (train) or
centred (validation) ``crop_size²`` window; ``coord=True`` adds ``"coord"``, the ``(crop_size, crop_size, 1)``
window of the map ``(r · W + c) / (H · W)`` of pixel positions, cut at the same place as the image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from ldm.data.image_paths import ConcatDatasetWithIndex, ImagePaths, NumpyPaths, crop_offsets
from ldm.util import ConfigError

__all__ = [
    "CelebAHQTrain", "CelebAHQValidation", "ConcatDatasetWithIndex", "FFHQTrain", "FFHQValidation", "FacesBase",
    "FacesHQTrain", "FacesHQValidation", "ImagePaths", "NumpyPaths",
]  # fmt: skip


def listed_paths(dataset: str, file_list: str, root: str, content: str) -> list[str]:
    """``root/<line>`` for each non-empty line of ``file_list``; both must exist (else a one-line fix is raised)."""
    where = f"relative to the working directory {os.getcwd()}"
    if not os.path.isfile(file_list):
        raise ConfigError(
            f"{dataset}: file list {file_list!r} not found ({where}); put there one file name per line, relative "
            f"to {root!r}, of the {content}"
        )
    if not os.path.isdir(root):
        raise ConfigError(f"{dataset}: image folder {root!r} not found ({where}); put the {content} listed in "
                          f"{file_list!r} there")
    names = Path(file_list).read_text(encoding="utf-8").splitlines()
    return [os.path.join(root, name) for name in names if name.strip()]


class FacesBase(Dataset):
    """``data[i]``, reduced to the entries named in ``keys`` when ``keys`` is given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.data: Any = None
        self.keys: list[str] | None = None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = self.data[i]
        if self.keys is None:
            return example
        return {key: example[key] for key in self.keys}


class _ListedFaces(FacesBase):
    """One face dataset: the files of ``FILE_LIST`` under ``ROOT``, read with ``READER``, centre-cropped."""

    FILE_LIST: ClassVar[str]
    ROOT: ClassVar[str]
    READER: ClassVar[type[ImagePaths]]
    CONTENT: ClassVar[str]

    def __init__(self, size: int | None, keys: list[str] | None = None) -> None:
        super().__init__()
        paths = listed_paths(type(self).__name__, self.FILE_LIST, self.ROOT, self.CONTENT)
        self.data = self.READER(paths=paths, size=size, random_crop=False)
        self.keys = keys


_CELEBAHQ = "CelebA-HQ images as .npy arrays of shape (1, 3, H, W), uint8 RGB"
_FFHQ = "FFHQ images as .png files"


class CelebAHQTrain(_ListedFaces):
    FILE_LIST, ROOT, READER, CONTENT = "data/celebahqtrain.txt", "data/celebahq", NumpyPaths, _CELEBAHQ


class CelebAHQValidation(_ListedFaces):
    FILE_LIST, ROOT, READER, CONTENT = "data/celebahqvalidation.txt", "data/celebahq", NumpyPaths, _CELEBAHQ


class FFHQTrain(_ListedFaces):
    FILE_LIST, ROOT, READER, CONTENT = "data/ffhqtrain.txt", "data/ffhq", ImagePaths, _FFHQ


class FFHQValidation(_ListedFaces):
    FILE_LIST, ROOT, READER, CONTENT = "data/ffhqvalidation.txt", "data/ffhq", ImagePaths, _FFHQ


def position_map(height: int, width: int) -> np.ndarray:
    """``(height, width, 1)`` float32: pixel ``(r, c)`` holds ``(r · width + c) / (height · width)``, in [0, 1)."""
    return (np.arange(height * width, dtype=np.float64) / (height * width)).astype(np.float32).reshape(height, width, 1)


class _FacesHQ(Dataset):
    """CelebA-HQ (class 0) followed by FFHQ (class 1), optionally cut to ``crop_size²`` (module doc)."""

    PARTS: ClassVar[tuple[type[FacesBase], type[FacesBase]]]
    RANDOM_CROP: ClassVar[bool]

    def __init__(
        self, size: int | None, keys: list[str] | None = None, crop_size: int | None = None, coord: bool = False
    ) -> None:
        self.data = ConcatDatasetWithIndex([part(size=size, keys=keys) for part in self.PARTS])
        self.crop_size = crop_size
        self.coord = coord

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        example, source = self.data[i]
        if self.crop_size is not None:
            image = example["image"]
            height, width = image.shape[:2]
            top, left = crop_offsets(height, width, self.crop_size, self.RANDOM_CROP)
            window = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
            example["image"] = image[window]
            if self.coord:
                example["coord"] = position_map(height, width)[window]
        example["class"] = source
        return example


class FacesHQTrain(_FacesHQ):
    PARTS, RANDOM_CROP = (CelebAHQTrain, FFHQTrain), True


class FacesHQValidation(_FacesHQ):
    PARTS, RANDOM_CROP = (CelebAHQValidation, FFHQValidation), False
