"""Image files and folders on Pillow: listing, reading, writing (RGB on disk), splitting large images, plotting.

Reading follows OpenCV's results: ``imread_uint`` returns RGB (or gray replicated to GGG), ``read_img`` returns
**BGR**; writers take RGB arrays. JPEGs are written at quality 95 (OpenCV's default).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = [".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".ppm", ".PPM", ".bmp", ".BMP", ".tif"]

#: Pillow modes holding one 16-bit or 32-bit integer channel.
_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I")


def is_image_file(filename: str) -> bool:
    """Whether ``filename`` ends with one of :data:`IMG_EXTENSIONS` (case as listed)."""
    return filename.endswith(tuple(IMG_EXTENSIONS))


def get_timestamp() -> str:
    """Local time as ``yymmdd-HHMMSS``."""
    return datetime.now().strftime("%y%m%d-%H%M%S")


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("imshow / surf need matplotlib; install it with `pip install matplotlib`.") from error
    return plt


def imshow(x: np.ndarray, title: str | None = None, cbar: bool = False, figsize: tuple[float, float] | None = None):
    """Show ``x`` (squeezed) in a matplotlib figure: gray colour map, nearest interpolation."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=figsize)
    picture = axes.imshow(np.squeeze(x), cmap="gray", interpolation="nearest")
    axes.set_title(title or "")
    if cbar:
        figure.colorbar(picture, ax=axes)
    plt.show()


def surf(Z: np.ndarray, cmap: str = "rainbow", figsize: tuple[float, float] | None = None):
    """Plot the 2-D array ``Z`` as a 3-D surface over its pixel grid."""
    plt = _pyplot()
    axes = plt.figure(figsize=figsize).add_subplot(projection="3d")
    columns, rows = np.meshgrid(np.arange(Z.shape[1]), np.arange(Z.shape[0]))
    axes.plot_surface(columns, rows, Z, cmap=cmap)
    plt.show()


def get_image_paths(dataroot: str | None) -> list[str] | None:
    """Sorted paths of the image files (:func:`is_image_file`) anywhere under ``dataroot``; ``None`` for ``None``."""
    if dataroot is None:
        return None
    if not os.path.isdir(dataroot):
        raise FileNotFoundError(f"get_image_paths: {dataroot} is not a directory; give a folder of images.")
    paths = [
        os.path.join(folder, name)
        for folder, _, names in sorted(os.walk(dataroot))
        for name in sorted(names)
        if is_image_file(name)
    ]
    if not paths:
        raise FileNotFoundError(f"get_image_paths: {dataroot} holds no image file ({', '.join(IMG_EXTENSIONS)}).")
    return sorted(paths)


def mkdir(path: str) -> None:
    """Create ``path`` (and parents) unless it exists."""
    os.makedirs(path, exist_ok=True)


def mkdirs(paths: str | list[str]) -> None:
    """:func:`mkdir` for one path or each of a list of paths."""
    for path in [paths] if isinstance(paths, str) else paths:
        mkdir(path)


def mkdir_and_rename(path: str) -> None:
    """Create ``path``; an existing one is first renamed to ``<path>_archived_<timestamp>`` (logged)."""
    if os.path.exists(path):
        archived = f"{path}_archived_{get_timestamp()}"
        logger.warning("Path already exists. Rename it to [%s]", archived)
        os.rename(path, archived)
    os.makedirs(path)


def _read_unchanged(path: str) -> np.ndarray:
    """Decoded pixels in RGB(A) order, or ``(H, W)`` for one-channel files (16-bit ones as uint16)."""
    with Image.open(path) as image:
        bands = image.getbands()
        if image.mode == "1":
            image = image.convert("L")
        elif image.mode not in ("RGB", "RGBA") and (len(bands) > 1 or image.mode == "P"):
            image = image.convert("RGBA" if "A" in bands or "transparency" in image.info else "RGB")
        return np.asarray(image)


def _luma_uint8(rgb: np.ndarray, weights: tuple[int, int, int], bits: int, rounded: bool) -> np.ndarray:
    """Integer luma ``(w_R R + w_G G + w_B B [+ 2^(bits−1)]) >> bits`` of a uint8 ``(H, W, 3)`` RGB image."""
    channels = rgb.astype(np.int64)
    total = sum(weight * channels[:, :, i] for i, weight in enumerate(weights))
    return ((total + (1 << (bits - 1) if rounded else 0)) >> bits).astype(np.uint8)


def _read_gray_uint8(path: str) -> np.ndarray:
    """OpenCV's ``IMREAD_GRAYSCALE``, 8 bits: a JPEG's decoded luma (libjpeg's grayscale output), a PNG's libpng
    ``rgb_to_gray`` (``(9797 R + 19234 G + 3737 B) >> 15``), other files OpenCV's
    ``(4899 R + 9617 G + 1868 B + 2¹³) >> 14``; 16-bit gray keeps its high byte."""
    with Image.open(path) as image:
        file_format = image.format
        if file_format == "JPEG":
            image.draft("L", image.size)
        if image.mode == "L":
            return np.asarray(image)
        if image.mode in _WIDE_GRAY_MODES:
            return (np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        rgb = np.asarray(image.convert("RGB"))
    if file_format == "PNG":
        return _luma_uint8(rgb, (9797, 19234, 3737), 15, rounded=False)
    return _luma_uint8(rgb, (4899, 9617, 1868), 14, rounded=True)


def imread_uint(path: str, n_channels: int = 3) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` RGB (gray files as GGG, alpha dropped; 16-bit gray stays uint16) for
    ``n_channels=3``, or ``(H, W, 1)`` uint8 gray for ``n_channels=1``."""
    if n_channels == 1:
        return _read_gray_uint8(path)[:, :, None]
    if n_channels == 3:
        pixels = _read_unchanged(path)
        return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels[:, :, :3]
    raise ValueError(f"imread_uint: n_channels must be 1 or 3, got {n_channels}.")


def read_img(path: str) -> np.ndarray:
    """Read an image file as float32 ``(H, W, C)`` in **BGR** order (``C`` = 1 for gray, alpha dropped), pixel values
    divided by 255 (so 16-bit files give values up to 257, as OpenCV-based readers do)."""
    pixels = _read_unchanged(path).astype(np.float32) / 255.0
    return pixels[:, :, None] if pixels.ndim == 2 else pixels[:, :, 2::-1]


def imsave(img: np.ndarray, img_path: str) -> None:
    """Write the RGB (or gray) uint8 / uint16 image ``img`` (size-1 dims squeezed; a 4th channel dropped)."""
    pixels = np.squeeze(img)
    if pixels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"imsave: {img_path}: need a uint8 or uint16 image, got {pixels.dtype}; use single2uint.")
    if pixels.ndim == 3:
        pixels = pixels[:, :, :3]
    options = {"quality": 95} if img_path.lower().endswith((".jpg", ".jpeg")) else {}
    Image.fromarray(np.ascontiguousarray(pixels)).save(img_path, **options)


def imwrite(img: np.ndarray, img_path: str) -> None:
    """Same as :func:`imsave`."""
    imsave(img, img_path)


def patches_from_image(img: np.ndarray, p_size: int = 512, p_overlap: int = 64, p_max: int = 800) -> list[np.ndarray]:
    """Overlapping ``p_size`` square patches of an ``(H, W, C)`` image larger than ``p_max`` on both sides: starts
    every ``p_size − p_overlap`` pixels plus one flush with the far edge; smaller images give ``[img]``."""
    rows, cols = img.shape[:2]
    if rows <= p_max or cols <= p_max:
        return [img]
    step = p_size - p_overlap
    tops = [*range(0, rows - p_size, step), rows - p_size]
    lefts = [*range(0, cols - p_size, step), cols - p_size]
    return [img[top : top + p_size, left : left + p_size, :] for top in tops for left in lefts]


def imssave(imgs: list[np.ndarray], img_path: str) -> None:
    """Write each RGB image of ``imgs`` as ``<folder of img_path>/<stem of img_path>_s<iiii>.png``."""
    stem = os.path.splitext(os.path.basename(img_path))[0]
    folder = os.path.dirname(img_path)
    for i, img in enumerate(imgs):
        imsave(img, os.path.join(folder, f"{stem}_s{i:04d}.png"))


def split_imageset(
    original_dataroot: str,
    taget_dataroot: str,
    n_channels: int = 3,
    p_size: int = 800,
    p_overlap: int = 96,
    p_max: int = 1000,
) -> None:
    """Cut every image under ``original_dataroot`` into :func:`patches_from_image` patches (images not larger than
    ``p_max`` are kept whole) written by :func:`imssave` into ``taget_dataroot`` (spelled as in the original)."""
    for path in get_image_paths(original_dataroot):
        patches = patches_from_image(imread_uint(path, n_channels=n_channels), p_size, p_overlap, p_max)
        imssave(patches, os.path.join(taget_dataroot, os.path.basename(path)))
