"""Image format conversions: uint8 / uint16 ``[0, 255]`` / ``[0, 65535]`` ↔ float32 ``[0, 1]`` ("single") ↔ torch.

Numpy images are ``(H, W, C)`` (or ``(H, W)``), tensors channel-first ``(C, H, W)`` / ``(1, C, H, W)``. Float → int
conversions clip to ``[0, 1]``, scale and round half to even.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def uint2single(img: np.ndarray) -> np.ndarray:
    """``img / 255`` as float32."""
    return np.float32(img / 255.0)


def single2uint(img: np.ndarray) -> np.ndarray:
    """``round(clip(img, 0, 1) · 255)`` as uint8."""
    return np.uint8((img.clip(0, 1) * 255.0).round())


def uint162single(img: np.ndarray) -> np.ndarray:
    """``img / 65535`` as float32."""
    return np.float32(img / 65535.0)


def single2uint16(img: np.ndarray) -> np.ndarray:
    """``round(clip(img, 0, 1) · 65535)`` as uint16."""
    return np.uint16((img.clip(0, 1) * 65535.0).round())


def _channels_last_to_tensor(img: np.ndarray) -> torch.Tensor:
    """``(H, W)`` / ``(H, W, C)`` array → float32 ``(C, H, W)`` tensor (no scaling)."""
    if img.ndim == 2:
        img = img[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()


def uint2tensor4(img: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W[, C])`` → float32 ``(1, C, H, W)`` in ``[0, 1]`` (``/ 255``)."""
    return _channels_last_to_tensor(img).div(255.0)[None]


def uint2tensor3(img: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W[, C])`` → float32 ``(C, H, W)`` in ``[0, 1]`` (``/ 255``)."""
    return _channels_last_to_tensor(img).div(255.0)


def _squeezed_channels_last(img: torch.Tensor) -> np.ndarray:
    """Tensor with its size-1 dims removed → float32 numpy; a 3-D result ``(C, H, W)`` becomes ``(H, W, C)``."""
    array = img.detach().squeeze().float().cpu().numpy()
    return array.transpose(1, 2, 0) if array.ndim == 3 else array


def tensor2uint(img: torch.Tensor) -> np.ndarray:
    """``(1, C, H, W)`` / ``(C, H, W)`` / ``(H, W)`` tensor in ``[0, 1]`` → uint8 ``(H, W, C)`` / ``(H, W)``,
    ``round(clip(x, 0, 1) · 255)`` (size-1 dims squeezed)."""
    array = _squeezed_channels_last(img.detach().float().clamp(0, 1))
    return np.uint8((array * 255.0).round())


def single2tensor3(img: np.ndarray) -> torch.Tensor:
    """float ``(H, W, C)`` → float32 ``(C, H, W)``."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()


def single2tensor4(img: np.ndarray) -> torch.Tensor:
    """float ``(H, W, C)`` → float32 ``(1, C, H, W)``."""
    return single2tensor3(img)[None]


def tensor2single(img: torch.Tensor) -> np.ndarray:
    """Tensor → float32 numpy with size-1 dims squeezed: ``(H, W, C)`` for 3 dims left, else as squeezed."""
    return _squeezed_channels_last(img)


def tensor2single3(img: torch.Tensor) -> np.ndarray:
    """Like :func:`tensor2single`, but a 2-D result gets a channel axis: always ``(H, W, C)`` for images."""
    array = _squeezed_channels_last(img)
    return array[:, :, None] if array.ndim == 2 else array


def single2tensor5(img: np.ndarray) -> torch.Tensor:
    """float ``(H, W, C, D)`` → float32 ``(1, C, H, W, D)``."""
    return single42tensor4(img)[None]


def single32tensor5(img: np.ndarray) -> torch.Tensor:
    """float ``(H, W, D)`` → float32 ``(1, 1, H, W, D)``."""
    return torch.from_numpy(np.ascontiguousarray(img)).float()[None, None]


def single42tensor4(img: np.ndarray) -> torch.Tensor:
    """float ``(H, W, C, D)`` → float32 ``(C, H, W, D)``."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1, 3).float()


def tensor2img(tensor: torch.Tensor, out_type: type = np.uint8, min_max: tuple[float, float] = (0, 1)) -> np.ndarray:
    """Tensor (RGB) → numpy image in **BGR** order: ``x ↦ (clip(x, lo, hi) − lo) / (hi − lo)``, then for uint8
    ``round(· 255)``; other ``out_type`` values stay in ``[0, 1]``.

    After squeezing size-1 dims: 4-D ``(B, C, H, W)`` → one grid image (``√B`` columns, torchvision's ``make_grid``,
    2-pixel black padding) ``(H', W', C)``; 3-D ``(C, H, W)`` → ``(H, W, C)``; 2-D ``(H, W)`` → ``(H, W)``.
    """
    low, high = min_max
    unit = (tensor.detach().squeeze().float().cpu().clamp(low, high) - low) / (high - low)
    if unit.dim() == 4:
        from torchvision.utils import make_grid

        unit = make_grid(unit, nrow=int(math.sqrt(len(unit))), normalize=False)
    if unit.dim() == 3:
        image = unit.numpy()[[2, 1, 0]].transpose(1, 2, 0)
    elif unit.dim() == 2:
        image = unit.numpy()
    else:
        raise TypeError(f"tensor2img takes a 4-D, 3-D or 2-D tensor, got {unit.dim()} dims after squeezing.")
    if out_type == np.uint8:
        image = (image * 255.0).round()
    return image.astype(out_type)
