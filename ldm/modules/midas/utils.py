"""The original MiDaS file helpers (``ldm.modules.midas.utils``): PFM depth files, image reading, the network-side
resizes and depth maps written as PFM + PNG. OpenCV is not needed: images go through Pillow, resizes through
``torch.nn.functional.interpolate`` (area for the image, bicubic for the depth, as the original's cv2 calls).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

#: The longer image side the network-side resize aims at.
UNIT_SIZE = 384.0


def read_pfm(path: str | Path) -> tuple[np.ndarray, float]:
    """A PFM file as ``(data, scale)``: ``(H, W, 3)`` for "PF" (colour) or ``(H, W)`` for "Pf", float32, rows top
    to bottom; a negative scale in the header means little-endian data (the returned scale is its magnitude)."""
    with open(path, "rb") as handle:
        kind = handle.readline().decode("ascii").strip()
        if kind not in ("PF", "Pf"):
            raise ValueError(f"{path} is not a PFM file (header {kind!r}, expected 'PF' or 'Pf')")
        width, height = (int(v) for v in handle.readline().decode("ascii").split())
        scale = float(handle.readline().decode("ascii").strip())
        dtype = "<f4" if scale < 0 else ">f4"
        data = np.fromfile(handle, dtype=dtype)
    shape = (height, width, 3) if kind == "PF" else (height, width)
    return np.flipud(data.reshape(shape)).astype(np.float32), abs(scale)


def write_pfm(path: str | Path, image: np.ndarray, scale: float = 1) -> None:
    """Write float32 ``image`` ``(H, W, 3)`` / ``(H, W)`` / ``(H, W, 1)`` as PFM (bottom row first, the byte order
    of the data recorded by the sign of the scale)."""
    image = np.asarray(image)
    if image.dtype != np.float32:
        raise ValueError(f"write_pfm needs float32 data, got {image.dtype}")
    colour = image.ndim == 3 and image.shape[2] == 3
    if not (colour or image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)):
        raise ValueError(f"write_pfm takes (H, W, 3), (H, W, 1) or (H, W) images, got {image.shape}")
    little = image.dtype.byteorder == "<" or (image.dtype.byteorder == "=" and sys.byteorder == "little")
    with open(path, "wb") as handle:
        handle.write(b"PF\n" if colour else b"Pf\n")
        handle.write(f"{image.shape[1]} {image.shape[0]}\n".encode("ascii"))
        handle.write(f"{-scale if little else scale}\n".encode("ascii"))
        np.flipud(image).tofile(handle)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as RGB float ``(H, W, 3)`` in [0, 1] (greyscale files are repeated over the channels)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def resize_image(img: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` → the network input ``(1, 3, h, w)`` float: the longer side scaled to 384, both sides rounded
    up to multiples of 32, area interpolation."""
    height, width = img.shape[:2]
    scale = max(height, width) / UNIT_SIZE
    size = (32 * math.ceil(height / scale / 32), 32 * math.ceil(width / scale / 32))
    tensor = torch.from_numpy(np.ascontiguousarray(img)).float().permute(2, 0, 1)[None]
    return F.interpolate(tensor, size=size, mode="area").contiguous()


def resize_depth(depth: torch.Tensor, width: int, height: int) -> np.ndarray:
    """The first depth map of a batch ``(B, 1, h, w)`` resized (bicubic) to ``(height, width)``, as numpy."""
    first = depth[0].reshape(1, 1, *depth.shape[-2:]).detach().float().cpu()
    return F.interpolate(first, size=(height, width), mode="bicubic", align_corners=False)[0, 0].numpy()


def write_depth(path: str | Path, depth: np.ndarray, bits: int = 1) -> None:
    """``path.pfm`` (the raw depth) and ``path.png`` (rescaled to the full range of ``bits`` bytes: 8 or 16-bit)."""
    if bits not in (1, 2):
        raise ValueError(f"write_depth writes 8-bit (bits=1) or 16-bit (bits=2) PNGs, not bits={bits}")
    write_pfm(f"{path}.pfm", depth.astype(np.float32))
    low, high = float(depth.min()), float(depth.max())
    top = 2 ** (8 * bits) - 1
    scaled = top * (depth - low) / (high - low) if high - low > np.finfo("float").eps else np.zeros(depth.shape)
    Image.fromarray(scaled.astype(np.uint8 if bits == 1 else np.uint16)).save(f"{path}.png")
