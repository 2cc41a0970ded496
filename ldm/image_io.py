"""Image files for the sampling scripts: init images in, numbered samples and grids out, optional watermark."""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image, UnidentifiedImageError

from ldm.atomic_write import atomic_file
from ldm.cli.validation import require_file

logger = logging.getLogger(__name__)

Watermark = Callable[[Image.Image], Image.Image]


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """Tile ``(B, C, H, W)`` into ``(3, rows * (H + p) + p, cols * (W + p) + p)`` with ``cols = min(nrow, B)``.

    Row-major order on a zero background, like ``torchvision.utils.make_grid``; one image (``(C, H, W)`` or a batch
    of one) is returned as is and 1-channel images become 3-channel.
    """
    if images.ndim == 3:
        images = images[None]
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[0] == 1:
        return images[0]
    count, channels, height, width = images.shape
    cols = min(nrow, count)
    rows = math.ceil(count / cols)
    grid = images.new_zeros(channels, rows * (height + padding) + padding, cols * (width + padding) + padding)
    for index, image in enumerate(images):
        row, col = divmod(index, cols)
        top, left = row * (height + padding) + padding, col * (width + padding) + padding
        grid[:, top : top + height, left : left + width] = image
    return grid


#: Pixels an init image may have unless the caller passes another bound (``--max_pixels``): 4096 x 4096.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Modes Pillow gives 16-bit and 32-bit images; ``convert`` would clip their values to 255 (white).
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def read_rgb_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image file as RGB; a missing, unreadable or too large file raises an error naming it."""
    return read_image(path, "--init-img", "init image", max_pixels=max_pixels)


def read_image(path: str | Path, flag: str, what: str = "image", mode: str = "RGB",
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image file converted to ``mode`` (``"RGB"``, ``"L"``, ...); a missing, unreadable or too large file
    (more than ``max_pixels``, read from the header before any pixel is decoded) raises an error naming it as
    ``what`` and the ``flag`` it came from. 16-bit and float images are scaled to 8 bits
    (:func:`wide_to_8bit`), not clipped."""
    path = require_file(path, flag, what)
    try:
        with warnings.catch_warnings():  # the size is checked against max_pixels below, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            file = Image.open(path)
        with file:
            width, height = file.size
            if width * height > max_pixels:
                raise ValueError(f"{what} {path} (from {flag}) is {width}x{height} = {width * height} pixels, above "
                                 f"--max_pixels {max_pixels}; shrink it, or raise --max_pixels if the memory is there")
            if file.mode in _WIDE_MODES:
                return wide_to_8bit(file, f"{what} {path} (from {flag})").convert(mode)
            return file.convert(mode)
    except Image.DecompressionBombError as error:
        raise ValueError(f"{what} {path} (from {flag}) is too large to decode ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        if str(error).startswith(f"{what} {path}"):
            raise
        raise ValueError(f"cannot read {what} {path}: not a readable image file ({error})") from error


def wide_to_8bit(image: Image.Image, source: str) -> Image.Image:
    """A 16-bit or float single-channel image as 8-bit ``"L"``: x / 65535 for 16-bit integers (``I;16*``, and
    ``I`` when every value lies in [0, 65535]), x itself for floats in [0, 1]; then round(255 x). Values outside
    those ranges (or nan) raise ``ValueError`` naming ``source``."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scale, limit = 1.0, "[0, 1]"
    else:
        scale, limit = 65535.0, "[0, 65535]"
    if values.size and not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= scale):
        low, high = np.nanmin(values), np.nanmax(values)
        raise ValueError(f"{source} is a {image.mode} image with values from {low:g} to {high:g} (or nan); only "
                         f"{limit} maps to black..white: rescale it or save it as 8- or 16-bit")
    return Image.fromarray(np.round(values / scale * 255.0).astype(np.uint8))


def image_to_tensor(image: Image.Image, factor: int) -> torch.Tensor:
    """RGB image → ``(1, 3, H, W)`` in [-1, 1], resized (Lanczos) down to multiples of ``factor``."""
    width, height = image.size
    new_size = (width - width % factor, height - height % factor)
    if min(new_size) == 0:
        raise ValueError(f"the init image is {width}x{height}; it needs at least {factor} pixels per side")
    logger.info("input image of size (%d, %d) resized to %s", width, height, new_size)
    pixels = np.asarray(image.resize(new_size, resample=Image.LANCZOS), dtype=np.float32) / 255.0
    return 2.0 * rearrange(torch.from_numpy(pixels), "h w c -> 1 c h w") - 1.0


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] → [0, 1], clamped: ``clamp((x + 1) / 2, 0, 1)`` for ``(B, 3, H, W)``."""
    return torch.clamp((images.float() + 1.0) / 2.0, min=0.0, max=1.0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` in [0, 1] → 8-bit RGB (``255 x`` truncated, not rounded)."""
    return Image.fromarray((255.0 * rearrange(image.cpu().numpy(), "c h w -> h w c")).astype(np.uint8))


def make_watermarker(text: str = "StableDiffusionV1") -> Watermark | None:
    """An invisible-watermark (DWT-DCT) encoder when the ``invisible-watermark`` package is installed, else None."""
    try:
        from imwatermark import WatermarkEncoder
    except ImportError:
        logger.info("invisible-watermark is not installed: images are saved without the invisible watermark")
        return None
    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", text.encode("utf-8"))

    def watermark(image: Image.Image) -> Image.Image:
        return put_watermark(image, encoder)

    return watermark


def next_index(folder: Path, pattern: str) -> int:
    """One past the largest number in the names matching ``pattern`` (a regex with one group), 0 if none."""
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(pattern, p.name))]
    return max(numbers, default=-1) + 1


def save_picture(picture: Image.Image, path: Path) -> None:
    """``picture.save(path)`` atomically (format from the suffix): a full disk or a kill leaves no truncated file."""
    image_format = Image.registered_extensions().get(Path(path).suffix.lower())
    if image_format is None:
        raise ValueError(f"cannot tell the image format of {path}: use a .png or .jpg name")
    with atomic_file(path) as handle:
        picture.save(handle, format=image_format)


def save_samples(images: torch.Tensor, folder: Path, watermark: Watermark | None = None) -> list[Path]:
    """Save ``(B, 3, H, W)`` images in [0, 1] as ``folder/00000.png, ...`` numbered after the existing ones."""
    index = next_index(folder, r"(\d+)\.png")
    paths = []
    for offset, image in enumerate(images):
        picture = to_pil(image)
        paths.append(folder / f"{index + offset:05}.png")
        save_picture(watermark(picture) if watermark else picture, paths[-1])
    return paths


def save_grid(batches: list[torch.Tensor], outdir: Path, n_rows: int, watermark: Watermark | None = None) -> Path:
    """Save all ``(B, 3, H, W)`` batches in [0, 1] as one grid ``outdir/grid-0000.png`` (``n_rows`` per row)."""
    grid = make_grid(torch.cat([b.cpu() for b in batches]), nrow=n_rows)
    index = next_index(outdir, r"grid-(\d+)\.png")
    path = outdir / f"grid-{index:04}.png"
    picture = to_pil(grid)
    save_picture(watermark(picture) if watermark else picture, path)
    return path


def numpy_to_pil(images: np.ndarray) -> list[Image.Image]:
    """``(H, W, 3)`` or ``(B, H, W, 3)`` floats in [0, 1] → 8-bit PIL images (``round(255 x)``)."""
    if images.ndim == 3:
        images = images[None, ...]
    return [Image.fromarray(image) for image in (images * 255).round().astype("uint8")]


def put_watermark(img: Image.Image, wm_encoder: Any = None) -> Image.Image:
    """``img`` with ``wm_encoder``'s invisible watermark (an ``imwatermark.WatermarkEncoder``, DWT-DCT, which
    works on BGR arrays); ``img`` unchanged without an encoder."""
    if wm_encoder is None:
        return img
    bgr = np.ascontiguousarray(np.asarray(img)[:, :, ::-1])
    return Image.fromarray(np.ascontiguousarray(wm_encoder.encode(bgr, "dwtDct")[:, :, ::-1]))


def load_replacement(x: np.ndarray, path: str | Path = "assets/rick.jpeg") -> np.ndarray:
    """The image shown instead of a flagged one: ``path`` resized to ``x``'s ``(H, W, 3)``, in [0, 1] with ``x``'s
    dtype; ``x`` itself when that file is missing or unreadable."""
    try:
        with Image.open(path) as file:
            replacement = file.convert("RGB").resize((x.shape[1], x.shape[0]))
    except (OSError, ValueError):
        return x
    y = (np.asarray(replacement) / 255.0).astype(x.dtype)
    return y if y.shape == x.shape else x
