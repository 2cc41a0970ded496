"""ImageNet (ILSVRC2012) train / validation over the layout the original code prepares (no download here).

``<data_root or $XDG_CACHE_HOME/autoencoders/data>/<NAME>/`` must hold ``data/<synset>/<image>.JPEG``,
``synset_human.txt`` (``<synset> <human label>`` lines) and, for ``keep_orig_class_label`` or ``sub_indices``,
``index_synset.yaml`` (``{index: synset}``); ``filelist.txt`` is written on first use if missing. Examples are
``{"image": (size, size, 3) float32 in [-1, 1], "relpath", "synsets", "class_label", "human_label",
"file_path_"}``: the shorter side resized to ``size``, then a centre (validation) or random (train) crop.
The super-resolution variants (``ImageNetSR*``) are not provided.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.base import load_rgb, to_model_range
from ldm.util import ConfigError

#: A file of the original train list that is not a readable JPEG; the original skips it too.
IGNORED_FILES = {"n06596364_9591.JPEG"}


def str_to_indices(text: str) -> list[int]:
    """``"0-3,7"`` → ``[0, 1, 2, 7]`` (ranges are end-exclusive, as in the original ``sub_indices``)."""
    indices: list[int] = []
    for part in str(text).split(","):
        if "-" in part:
            start, end = (int(x) for x in part.split("-"))
            if end <= start:
                raise ConfigError(f"sub_indices range {part!r}: the end must be greater than the start.")
            indices.extend(range(start, end))
        else:
            indices.append(int(part))
    return sorted(indices)


def _lookup(config: Mapping[str, Any], path: str, default: Any) -> Any:
    node: Any = config
    for key in path.split("/"):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


class ImageNetBase(Dataset):
    """Shared loading; subclasses set ``NAME`` and the default of ``<Class>/random_crop``."""

    NAME = ""
    RANDOM_CROP_DEFAULT = False

    def __init__(self, config: Mapping[str, Any] | None = None, process_images: bool = True,
                 data_root: str | None = None):
        config = OmegaConf.to_container(config) if OmegaConf.is_config(config) else dict(config or {})
        cache = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
        self.root = Path(data_root or os.path.join(cache, "autoencoders", "data")) / self.NAME
        self.datadir = self.root / "data"
        self.config = config
        self.process_images = process_images
        self.size = int(config.get("size", 256))
        self.random_crop = bool(_lookup(config, f"{type(self).__name__}/random_crop", self.RANDOM_CROP_DEFAULT))
        self.keep_orig_class_label = bool(config.get("keep_orig_class_label", False))
        self.relpaths = self._relpaths()
        self.synsets = [p.split("/")[0] for p in self.relpaths]
        self.abspaths = [str(self.datadir / p) for p in self.relpaths]
        if self.keep_orig_class_label:
            synset_to_index = {s: i for i, s in self._index_to_synset().items()}
            self.class_labels = [synset_to_index[s] for s in self.synsets]
        else:
            order = {s: i for i, s in enumerate(sorted(set(self.synsets)))}
            self.class_labels = [order[s] for s in self.synsets]
        human = self._required("synset_human.txt").read_text().splitlines()
        human_dict = dict(line.split(maxsplit=1) for line in human if line.strip())
        self.human_labels = [human_dict[s] for s in self.synsets]

    def _required(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            raise ConfigError(
                f"ImageNet {self.NAME}: {path} not found. Prepare {self.root} as the original code does "
                "(data/<synset>/*.JPEG, synset_human.txt, index_synset.yaml) and set data_root or XDG_CACHE_HOME; "
                "this package does not download ImageNet."
            )
        return path

    def _index_to_synset(self) -> dict[int, str]:
        return {int(k): str(v) for k, v in yaml.safe_load(self._required("index_synset.yaml").read_text()).items()}

    def _relpaths(self) -> list[str]:
        filelist = self.root / "filelist.txt"
        if not filelist.is_file():
            if not self.datadir.is_dir():
                self._required("data")
            found = sorted(p.relative_to(self.datadir).as_posix() for p in self.datadir.glob("*/*.JPEG"))
            filelist.write_text("".join(f"{p}\n" for p in found))
        relpaths = [p for p in filelist.read_text().splitlines() if p and p.split("/")[-1] not in IGNORED_FILES]
        if "sub_indices" in self.config:
            mapping = self._index_to_synset()
            keep = {mapping[i] for i in str_to_indices(self.config["sub_indices"])}
            relpaths = [p for p in relpaths if p.split("/")[0] in keep]
        if not relpaths:
            raise ConfigError(f"ImageNet {self.NAME}: no images listed in {filelist}.")
        return relpaths

    def __len__(self) -> int:
        return len(self.relpaths)

    def load_image(self, path: str) -> np.ndarray:
        """Shorter side → ``size`` (bilinear), then a ``size``² centre or random crop; ``size <= 0`` keeps it."""
        image = load_rgb(path)
        if self.size > 0:
            width, height = image.size
            scale = self.size / min(width, height)
            width, height = max(self.size, round(width * scale)), max(self.size, round(height * scale))
            image = image.resize((width, height), resample=Image.Resampling.BILINEAR)
            if self.random_crop:
                left = int(torch.randint(0, width - self.size + 1, ()).item())
                top = int(torch.randint(0, height - self.size + 1, ()).item())
            else:
                left, top = (width - self.size) // 2, (height - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        return to_model_range(image)

    def __getitem__(self, i: int) -> dict[str, Any] | str:
        if not self.process_images:
            return self.abspaths[i]
        return {
            "image": self.load_image(self.abspaths[i]),
            "relpath": self.relpaths[i],
            "synsets": self.synsets[i],
            "class_label": self.class_labels[i],
            "human_label": self.human_labels[i],
            "file_path_": self.abspaths[i],
        }


class ImageNetTrain(ImageNetBase):
    NAME = "ILSVRC2012_train"
    RANDOM_CROP_DEFAULT = True


class ImageNetValidation(ImageNetBase):
    NAME = "ILSVRC2012_validation"
    RANDOM_CROP_DEFAULT = False
