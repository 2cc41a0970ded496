"""Users' own images as a training set: a folder scanned recursively, in the LDM batch format.

Each example is ``{"image": (H, W, 3) float32 in [-1, 1], "class_label": int, "human_label": str,
"caption": str, "txt": str, "file_path_": str}``. With ``aspect_buckets`` each image is instead resized and cropped
to its aspect-ratio bucket (:mod:`ldm.data.aspect_buckets`; ``bucket_ids`` lists every image's bucket, for
:class:`~ldm.data.aspect_buckets.AspectBucketBatchSampler`). Class labels are the indices of the sorted top-level
sub-folders (images directly in ``root`` get label 0 when there are no sub-folders). Captions come from a
side-car ``<image stem>.txt`` next to the image or from one ``captions`` file (JSON ``{relative path:
caption}`` or lines ``relative path<TAB>caption``); images without one get ``""``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.aspect_buckets import AspectBuckets
from ldm.data.base import load_rgb, maybe_flip, square_crop_box, to_model_range
from ldm.util import ConfigError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _is_readable(path: Path) -> str | None:
    """None if PIL can open and verify ``path``, else the reason it cannot."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # PIL raises many types for corrupt files
        return f"{type(error).__name__}: {error}"
    return None


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header (no decoding)."""
    with Image.open(path) as image:
        return image.size


def _read_captions_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ConfigError(f"captions file {str(path)!r} does not exist; fix 'captions' in the dataset params.")
    if path.suffix == ".json":
        return {str(k): str(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    captions = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise ConfigError(f"{path}:{number}: expected 'relative/path.png<TAB>caption', got {line!r}.")
        relpath, caption = line.split("\t", 1)
        captions[relpath.strip()] = caption.strip()
    return captions


class ImageFolderDataset(Dataset):
    """Images under ``root`` (recursive), cropped to a square (centre or random) and resized to ``size``.

    :param root: folder to scan.
    :param size: output side in pixels; None keeps each image's size (then ``batch_size`` must be 1 or all
        images the same size).
    :param random_crop: random instead of centre crop.
    :param flip_p: probability of a horizontal flip.
    :param captions: optional captions file (JSON or TSV, paths relative to ``root``); side-car ``.txt``
        files are used for images it does not cover.
    :param skip_corrupt: skip unreadable images with one counted warning (True) or raise naming the file.
    :param aspect_buckets: aspect-ratio bucketing settings (``base_size`` defaults to ``size``); None keeps the
        square crop.
    """

    def __init__(
        self,
        root: str,
        size: int | None = 256,
        random_crop: bool = False,
        flip_p: float = 0.5,
        captions: str | None = None,
        skip_corrupt: bool = True,
        aspect_buckets: Mapping[str, Any] | None = None,
    ):
        self.root = Path(root).expanduser()
        self.size = size
        self.random_crop = random_crop
        self.flip_p = flip_p
        if not self.root.is_dir():
            raise ConfigError(f"image folder {str(self.root)!r} does not exist; fix 'root' in the dataset params.")
        candidates = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        self.paths = self._readable(candidates, skip_corrupt)
        if not self.paths:
            raise ConfigError(
                f"image folder {str(self.root)!r} contains no readable images "
                f"(searched recursively for {', '.join(IMAGE_EXTENSIONS)})."
            )
        self.class_names = sorted({p.relative_to(self.root).parts[0] for p in self.paths if p.parent != self.root})
        self.captions = _read_captions_file(Path(captions).expanduser()) if captions else {}
        self.buckets = AspectBuckets.from_config(aspect_buckets, default_base=size) if aspect_buckets else None
        self.bucket_ids = [self.buckets.nearest(*_image_size(p)) for p in self.paths] if self.buckets else None

    def _readable(self, candidates: list[Path], skip_corrupt: bool) -> list[Path]:
        paths, skipped = [], []
        for path in candidates:
            reason = _is_readable(path)
            if reason is None:
                paths.append(path)
            elif skip_corrupt:
                skipped.append(f"{path} ({reason})")
            else:
                raise ConfigError(
                    f"cannot read image {str(path)!r} ({reason}); remove it or set skip_corrupt: true."
                )
        if skipped:
            logger.warning("skipped %d unreadable image(s) in %s: %s", len(skipped), self.root, "; ".join(skipped))
        self.num_skipped = len(skipped)
        return paths

    def __len__(self) -> int:
        return len(self.paths)

    def label_of(self, path: Path) -> tuple[int, str]:
        """``(class_label, human_label)`` from the top-level sub-folder ``path`` lies in."""
        if path.parent == self.root:
            return 0, ""
        name = path.relative_to(self.root).parts[0]
        return self.class_names.index(name), name

    def caption_of(self, path: Path) -> str:
        relpath = path.relative_to(self.root).as_posix()
        if relpath in self.captions:
            return self.captions[relpath]
        sidecar = path.with_suffix(".txt")
        return sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""

    def load_image(self, path: Path, bucket: int | None = None) -> np.ndarray:
        """``(H, W, 3)`` float32 in [-1, 1]: square crop and resize to ``size`` (or resize and crop to the size of
        aspect bucket ``bucket``), optional flip."""
        image = load_rgb(path)
        if bucket is not None:
            image = self.buckets.resize(image, bucket, random_crop=self.random_crop)
        elif self.size is not None:
            image = image.crop(square_crop_box(*image.size, random_crop=self.random_crop))
            image = image.resize((self.size, self.size), resample=Image.Resampling.BICUBIC)
        return to_model_range(maybe_flip(image, self.flip_p))

    def __getitem__(self, idx: int) -> dict[str, Any]:
        path = self.paths[idx]
        class_label, human_label = self.label_of(path)
        caption = self.caption_of(path)
        return {
            "image": self.load_image(path, self.bucket_ids[idx] if self.bucket_ids else None),
            "class_label": class_label,
            "human_label": human_label,
            "caption": caption,
            "txt": caption,
            "file_path_": str(path),
        }
