"""Users' own images as a training set: a folder scanned recursively, in the LDM batch format.

Each example is ``{"image": (H, W, 3) float32 in [-1, 1], "class_label": int, "human_label": str,
"caption": str, "txt": str, "file_path_": str}``. Class labels are the indices of the sorted top-level
sub-folders (images directly in ``root`` get label 0 when there are no sub-folders). Captions come from a
side-car ``<image stem>.txt`` next to the image or from one ``captions`` file (JSON ``{relative path:
caption}`` or lines ``relative path<TAB>caption``); images without one get ``""``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

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
    """

    def __init__(
        self,
        root: str,
        size: int | None = 256,
        random_crop: bool = False,
        flip_p: float = 0.5,
        captions: str | None = None,
        skip_corrupt: bool = True,
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

    def load_image(self, path: Path) -> np.ndarray:
        """``(H, W, 3)`` float32 in [-1, 1]: square crop, resize to ``size``, optional flip."""
        image = load_rgb(path)
        if self.size is not None:
            image = image.crop(square_crop_box(*image.size, random_crop=self.random_crop))
            image = image.resize((self.size, self.size), resample=Image.Resampling.BICUBIC)
        return to_model_range(maybe_flip(image, self.flip_p))

    def __getitem__(self, idx: int) -> dict[str, Any]:
        path = self.paths[idx]
        class_label, human_label = self.label_of(path)
        caption = self.caption_of(path)
        return {
            "image": self.load_image(path),
            "class_label": class_label,
            "human_label": human_label,
            "caption": caption,
            "txt": caption,
            "file_path_": str(path),
        }
