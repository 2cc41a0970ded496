"""ImageNet (ILSVRC2012) train / validation over the ``ILSVRC2012_*`` cache layout (no download here).

``<data_root or $XDG_CACHE_HOME/autoencoders/data>/<NAME>/`` must hold ``data/<synset>/<image>.JPEG``,
``synset_human.txt`` (``<synset> <human label>`` lines) and, for ``keep_orig_class_label`` or ``sub_indices``,
``index_synset.yaml`` (``{index: synset}``); ``filelist.txt`` is written on first use if missing. Examples are
``{"image": (size, size, 3) float32 in [-1, 1], "relpath", "synsets", "class_label", "human_label",
"file_path_"}``: the shorter side resized to ``size``, then a centre (validation) or random (train) crop.

``ImageNetSRTrain`` / ``ImageNetSRValidation`` (the autoencoder and ``bsr_sr`` configs' data) add ``"LR_image"``: a
square crop of side ``int(min(H, W) * U(min_crop_f, max_crop_f))`` area-resized to ``size`` is the HR ``"image"``,
and its degradation to ``size // downscale_f`` (a resize, or the BSRGAN pipeline) is ``"LR_image"`` (both float32 in
[-1, 1]).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.base import load_rgb, to_model_range
from ldm.modules.image_degradation import degradation_fn_bsr, degradation_fn_bsr_light
from ldm.util import ConfigError

logger = logging.getLogger(__name__)

#: A file of the train list that is not a readable JPEG; it is skipped.
IGNORED_FILES = {"n06596364_9591.JPEG"}


def synset2idx(path_to_yaml: str = "data/index_synset.yaml") -> dict[str, int]:
    """Invert the ImageNet ``index: synset`` YAML file into ``{synset: index}``."""
    with open(path_to_yaml) as handle:
        index_to_synset = yaml.safe_load(handle)
    return {synset: index for index, synset in index_to_synset.items()}


def str_to_indices(text: str) -> list[int]:
    """``"0-3,7"`` → ``[0, 1, 2, 7]`` (ranges are end-exclusive)."""
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
                f"ImageNet {self.NAME}: {path} not found. Prepare {self.root} in the latent-diffusion layout "
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

    def labels(self, i: int) -> dict[str, Any]:
        """The metadata of example ``i`` (every key of an example but ``"image"``), without reading the file."""
        return {
            "relpath": self.relpaths[i],
            "synsets": self.synsets[i],
            "class_label": self.class_labels[i],
            "human_label": self.human_labels[i],
            "file_path_": self.abspaths[i],
        }

    def __getitem__(self, i: int) -> dict[str, Any] | str:
        if not self.process_images:
            return self.abspaths[i]
        return {"image": self.load_image(self.abspaths[i]), **self.labels(i)}


class _ImageNetSplit(ImageNetBase):
    """The original's split constructor: ``(process_images=True, data_root=None, config=None)``, in that order."""

    def __init__(self, process_images: bool = True, data_root: str | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config=config, process_images=process_images, data_root=data_root)


class ImageNetTrain(_ImageNetSplit):
    NAME = "ILSVRC2012_train"
    RANDOM_CROP_DEFAULT = True


class ImageNetValidation(_ImageNetSplit):
    NAME = "ILSVRC2012_validation"
    RANDOM_CROP_DEFAULT = False


def area_resample_rows(x: np.ndarray, n_out: int) -> np.ndarray:
    """Area-resample axis 0 of float ``x``: output ``o`` is the mean of the piecewise-constant input over
    ``[o s, (o + 1) s]``, ``s = n_in / n_out``, computed from the running integral ``F`` as ``(F(b) − F(a)) / s``.

    This is OpenCV's ``INTER_AREA`` both when shrinking and when enlarging (where it blends only across a
    source-pixel boundary); OpenCV's float / fixed-point weights can round one uint8 level differently.
    """
    n_in = x.shape[0]
    integral = np.concatenate([np.zeros_like(x[:1]), np.cumsum(x, axis=0)])
    edges = np.arange(n_out + 1) * n_in / n_out
    index = np.minimum(edges.astype(np.int64), n_in - 1)
    fraction = (edges - index).reshape(-1, *([1] * (x.ndim - 1)))
    at_edges = integral[index] + fraction * x[index]
    return (at_edges[1:] - at_edges[:-1]) * (n_out / n_in)


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, C)`` uint8 → ``(height, width, C)`` uint8 by area resampling, rounded to nearest (half to even)."""
    rows = area_resample_rows(image.astype(np.float64), height)
    out = area_resample_rows(rows.transpose(1, 0, 2), width).transpose(1, 0, 2)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def nearest_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV ``INTER_NEAREST``: output pixel ``o`` takes source ``floor(o * n_in / n_out)``."""
    rows = np.arange(height) * image.shape[0] // height
    cols = np.arange(width) * image.shape[1] // width
    return image[rows][:, cols]


def torch_resize(image: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """Half-pixel-centred ``bilinear`` / ``bicubic`` (a = −0.75) without antialiasing, as OpenCV's uint8 resize."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].double()
    y = F.interpolate(x, size=(height, width), mode=mode, align_corners=False, antialias=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def pil_resize(image: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    """``PIL.Image.resize`` with filter ``resample`` (what ``torchvision``'s PIL ``resize`` calls)."""
    return np.asarray(Image.fromarray(image).resize((width, height), resample=resample))


Resizer = Callable[[np.ndarray, int, int], np.ndarray]

#: ``degradation`` names → ``(H, W, 3)`` uint8 resizers. ``pil_*`` are PIL's filters exactly;
#: ``cv_nearest`` is OpenCV's exactly; ``cv_area``, ``cv_bilinear`` and ``cv_bicubic`` sample as OpenCV does, in
#: float (OpenCV's float / fixed-point uint8 weights can round one level differently); ``cv_lanczos`` (OpenCV's
#: 8-tap Lanczos-4 without antialiasing) maps to PIL's antialiased Lanczos-3, the closest filter without OpenCV.
DEGRADATIONS: dict[str, Resizer] = {
    "cv_nearest": nearest_resize,
    "cv_bilinear": partial(torch_resize, mode="bilinear"),
    "cv_bicubic": partial(torch_resize, mode="bicubic"),
    "cv_area": area_resize,
    "cv_lanczos": partial(pil_resize, resample=Image.Resampling.LANCZOS),
    **{
        f"pil_{name.lower()}": partial(pil_resize, resample=getattr(Image.Resampling, name))
        for name in ("NEAREST", "BILINEAR", "BICUBIC", "BOX", "HAMMING", "LANCZOS")
    },
}
#: BSRGAN degradation pipelines: ``degradation_bsrgan_variant`` of the full and of the light model.
BSRGAN_DEGRADATIONS: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "bsrgan": degradation_fn_bsr,
    "bsrgan_light": degradation_fn_bsr_light,
}


def bsrgan_degrade(
    image: np.ndarray, height: int, width: int, degrade: Callable[..., dict[str, np.ndarray]], sf: int
) -> np.ndarray:
    """``(H, W, 3)`` uint8 → ``degrade(image, sf=sf)["image"]``, the uint8 ``(H // sf, W // sf, 3)`` LR image,
    which must be ``(height, width, 3)``."""
    low = degrade(image, sf=sf)["image"]
    if low.shape[:2] != (height, width):
        raise ValueError(f"BSRGAN degradation gave {low.shape[:2]}, expected {(height, width)}; size must be sf * LR.")
    return low


def read_indices(path: Path, length: int) -> list[int]:
    """Whitespace-separated integer indices into a dataset of ``length`` examples."""
    if not path.is_file():
        raise ConfigError(f"hr_indices file {path} not found; give an existing file or leave hr_indices unset.")
    try:
        indices = [int(token) for token in path.read_text().split()]
    except ValueError as error:
        raise ConfigError(f"hr_indices file {path}: {error}; it must hold whitespace-separated integers.") from error
    bad = [i for i in indices if not 0 <= i < length]
    if bad:
        raise ConfigError(f"hr_indices file {path}: indices {bad[:5]} are outside the {length} images listed.")
    return indices


class ImageNetSR(Dataset):
    """Super-resolution pairs from ImageNet; subclasses set ``BASE`` and ``INDEX_NAME``.

    Example ``i``: the base example's labels plus ``"image"`` ``(size, size, 3)`` and ``"LR_image"``
    ``(size // downscale_f, size // downscale_f, 3)``, float32 in [-1, 1]. Steps: a square crop of side
    ``int(min(H, W) * c)``, ``c ~ U(min_crop_f, max_crop_f)``, random or centred; area-resized to ``size``
    (OpenCV ``INTER_AREA``, see :func:`area_resize`); ``LR_image = degradation(image)``. Randomness uses the torch
    RNG, so DataLoader workers differ without a worker seed; the BSRGAN pipelines (``"bsrgan"``, ``"bsrgan_light"``)
    also draw from numpy's and ``random``'s global RNGs, as the original does (``worker_init_fn`` seeds numpy per
    worker; torch seeds ``random``).

    Which base images are used: the indices (whitespace-separated integers into the base image list) in the text file
    ``hr_indices`` if given, else in ``data/<INDEX_NAME>.txt`` (relative to the working directory) if it exists, else
    all of them. A pickle ``data/<INDEX_NAME>.p`` is never unpickled (a warning says how to convert it). ``data_root``
    is the base dataset's (default ``$XDG_CACHE_HOME/autoencoders/data``), so missing data raises the base dataset's
    error.
    """

    BASE: type[ImageNetBase] = ImageNetBase
    INDEX_NAME = ""

    def __init__(
        self,
        size: int | None = None,
        degradation: str | None = None,
        downscale_f: int = 4,
        min_crop_f: float = 0.5,
        max_crop_f: float = 1.0,
        random_crop: bool = True,
        data_root: str | None = None,
        hr_indices: str | None = None,
    ):
        if not size or size % downscale_f:
            raise ConfigError(f"ImageNetSR: size={size} must be a positive multiple of downscale_f={downscale_f}.")
        if not 0.0 < min_crop_f <= max_crop_f <= 1.0:
            raise ConfigError(
                f"ImageNetSR: need 0 < min_crop_f <= max_crop_f <= 1, got min_crop_f={min_crop_f}, "
                f"max_crop_f={max_crop_f}."
            )
        if degradation not in DEGRADATIONS and degradation not in BSRGAN_DEGRADATIONS:
            raise ConfigError(
                f"ImageNetSR: unknown degradation {degradation!r}; "
                f"use one of {sorted(DEGRADATIONS) + sorted(BSRGAN_DEGRADATIONS)}."
            )
        self.size = size
        self.LR_size = size // downscale_f
        self.min_crop_f = min_crop_f
        self.max_crop_f = max_crop_f
        self.center_crop = not random_crop
        if degradation in BSRGAN_DEGRADATIONS:
            self.degradation_process = partial(bsrgan_degrade, degrade=BSRGAN_DEGRADATIONS[degradation], sf=downscale_f)
        else:
            self.degradation_process = DEGRADATIONS[degradation]
        self.base = self.BASE(process_images=False, data_root=data_root)
        self.indices = self._indices(hr_indices)

    def _indices(self, hr_indices: str | None) -> list[int]:
        default = Path("data") / f"{self.INDEX_NAME}.txt"
        path = Path(hr_indices) if hr_indices else default
        if hr_indices or default.is_file():
            return read_indices(path, len(self.base))
        if default.with_suffix(".p").is_file():
            logger.warning(
                "%s: %s is not unpickled; using all %d images. Write its indices as whitespace-separated integers "
                "to %s to use that subset.", type(self).__name__, default.with_suffix(".p"),
                len(self.base), default,
            )
        return list(range(len(self.base)))

    def __len__(self) -> int:
        return len(self.indices)

    def crop_box(self, height: int, width: int) -> tuple[int, int, int]:
        """``(top, left, side)`` of the square crop, ``side = int(min(height, width) * U(min_crop_f, max_crop_f))``."""
        fraction = self.min_crop_f + (self.max_crop_f - self.min_crop_f) * torch.rand(()).item()
        side = int(min(height, width) * fraction)
        if self.center_crop:
            return (height - side) // 2, (width - side) // 2, side
        top = int(torch.randint(0, height - side + 1, ()).item())
        left = int(torch.randint(0, width - side + 1, ()).item())
        return top, left, side

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = self.base.labels(self.indices[i])
        image = np.asarray(load_rgb(example["file_path_"]))
        top, left, side = self.crop_box(*image.shape[:2])
        image = area_resize(image[top : top + side, left : left + side], self.size, self.size)
        lr_image = self.degradation_process(image, self.LR_size, self.LR_size)
        example["image"] = to_model_range(Image.fromarray(image))
        example["LR_image"] = to_model_range(Image.fromarray(lr_image))
        return example


class ImageNetSRTrain(ImageNetSR):
    BASE = ImageNetTrain
    INDEX_NAME = "imagenet_train_hr_indices"


class ImageNetSRValidation(ImageNetSR):
    BASE = ImageNetValidation
    INDEX_NAME = "imagenet_val_hr_indices"
