"""Image files for the sampling scripts: init images in, numbered samples and grids out, optional watermark."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image, UnidentifiedImageError
from torchvision.utils import make_grid

logger = logging.getLogger(__name__)

Watermark = Callable[[Image.Image], Image.Image]


def read_rgb_image(path: str | Path) -> Image.Image:
    """The image file as RGB; a missing or unreadable file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init image not found: {path} (from --init-img)")
    try:
        with Image.open(path) as file:
            return file.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read init image {path}: not a readable image file ({error})") from error


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
    """``(3, H, W)`` in [0, 1] → 8-bit RGB (``255 x`` truncated, as the original scripts)."""
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
        bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
        return Image.fromarray(np.ascontiguousarray(encoder.encode(bgr, "dwtDct")[:, :, ::-1]))

    return watermark


def next_index(folder: Path, pattern: str) -> int:
    """One past the largest number in the names matching ``pattern`` (a regex with one group), 0 if none."""
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(pattern, p.name))]
    return max(numbers, default=-1) + 1


def save_samples(images: torch.Tensor, folder: Path, watermark: Watermark | None = None) -> list[Path]:
    """Save ``(B, 3, H, W)`` images in [0, 1] as ``folder/00000.png, ...`` numbered after the existing ones."""
    index = next_index(folder, r"(\d+)\.png")
    paths = []
    for offset, image in enumerate(images):
        picture = to_pil(image)
        paths.append(folder / f"{index + offset:05}.png")
        (watermark(picture) if watermark else picture).save(paths[-1])
    return paths


def save_grid(batches: list[torch.Tensor], outdir: Path, n_rows: int, watermark: Watermark | None = None) -> Path:
    """Save all ``(B, 3, H, W)`` batches in [0, 1] as one grid ``outdir/grid-0000.png`` (``n_rows`` per row)."""
    grid = make_grid(torch.cat([b.cpu() for b in batches]), nrow=n_rows)
    index = next_index(outdir, r"grid-(\d+)\.png")
    path = outdir / f"grid-{index:04}.png"
    picture = to_pil(grid)
    (watermark(picture) if watermark else picture).save(path)
    return path
