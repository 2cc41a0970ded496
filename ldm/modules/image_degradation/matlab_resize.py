"""MATLAB ``imresize(x, scale, 'bicubic')`` (with its antialiasing) for numpy ``(H, W[, C])`` and torch ``([C,] H, W)``.

Along each axis, output ``o = 1 .. n_out`` (1-based, MATLAB's convention) sits at input position
``u_o = o / s + (1 − 1/s) / 2`` for scale ``s``; it is ``Σ_k w_ok · x[j_o + k]`` over the integer positions
``j_o + k`` near ``u_o``, with ``w_ok ∝ c(u_o − j_o − k)`` for the Keys cubic ``c`` (``a = −0.5``). When shrinking
with antialiasing the kernel is stretched: ``w_ok ∝ s · c(s (u_o − j_o − k))`` over ``⌈4 / s⌉ + 2`` taps. Positions
outside ``1 .. n_in`` are mirrored (``x[0] = x[1]``, ``x[n + 1] = x[n]``). Output sizes are ``⌈n_in · s⌉``; the
height is resized first, then the width, in float32.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def cubic(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Keys' cubic convolution kernel with ``a = −0.5`` (MATLAB's ``bicubic``), elementwise:

    ``c(x) = 1.5|x|³ − 2.5|x|² + 1`` for ``|x| ≤ 1``; ``−0.5|x|³ + 2.5|x|² − 4|x| + 2`` for ``1 < |x| ≤ 2``; else 0.
    """
    size = abs(x)
    inner = (1.5 * size**3 - 2.5 * size**2 + 1) * (size <= 1)
    outer = (-0.5 * size**3 + 2.5 * size**2 - 4 * size + 2) * ((size > 1) & (size <= 2))
    return inner + outer


def calculate_weights_indices(
    in_length: int, out_length: int, scale: float, kernel: str, kernel_width: float, antialiasing: bool
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Resampling taps of one axis (see the module docstring); ``kernel`` must be ``"cubic"``.

    Returns ``(weights, indices, pad_start, pad_end)``: ``weights`` ``(out_length, T)`` float32 with rows summing to
    one; ``indices`` ``(out_length, T)`` float32 positions into the input padded by ``pad_start`` mirrored samples
    in front (0-based: ``indices + 1 − pad_start`` are MATLAB's 1-based input positions); ``pad_end`` mirrored
    samples are needed behind. ``T = ⌈width⌉ + 2`` minus the trimmed edge columns: if the first column holds a zero
    weight the first and last columns are dropped, else if the last one does the last two are (the reference
    implementation's rule, kept for identical numbers).
    """
    if kernel != "cubic":
        raise ValueError(f"calculate_weights_indices: only the 'cubic' kernel is implemented, got {kernel!r}.")
    stretch = scale < 1 and antialiasing
    support = kernel_width / scale if stretch else kernel_width
    centres = torch.linspace(1, out_length, out_length) / scale + 0.5 * (1 - 1 / scale)
    n_taps = math.ceil(support) + 2
    positions = torch.floor(centres - support / 2)[:, None] + torch.linspace(0, n_taps - 1, n_taps)[None, :]
    offsets = centres[:, None] - positions
    weights = scale * cubic(offsets * scale) if stretch else cubic(offsets)
    weights = weights / torch.sum(weights, 1)[:, None]
    if bool((weights[:, 0] == 0).any()):
        keep = slice(1, n_taps - 1)
    elif bool((weights[:, -1] == 0).any()):
        keep = slice(0, n_taps - 2)
    else:
        keep = slice(0, n_taps)
    weights, positions = weights[:, keep].contiguous(), positions[:, keep].contiguous()
    pad_start = 1 - int(positions.min())
    pad_end = int(positions.max()) - in_length
    return weights, positions + (pad_start - 1), pad_start, pad_end


def _mirror(index: torch.Tensor, length: int) -> torch.Tensor:
    """Half-sample symmetric extension: ``−1 → 0``, ``−2 → 1``, ``length → length − 1`` (period ``2 length``)."""
    folded = torch.remainder(index, 2 * length)
    return torch.where(folded >= length, 2 * length - 1 - folded, folded)


def _resize_axis(x: torch.Tensor, dim: int, out_length: int, scale: float, antialiasing: bool) -> torch.Tensor:
    """Resample float32 ``x`` along ``dim`` to ``out_length`` samples with the bicubic taps."""
    length = x.shape[dim]
    weights, indices, pad_start, _ = calculate_weights_indices(length, out_length, scale, "cubic", 4, antialiasing)
    sources = _mirror(indices.long() - pad_start, length)
    gathered = x.index_select(dim, sources.reshape(-1)).unflatten(dim, tuple(sources.shape))
    shape = [1] * gathered.ndim
    shape[dim], shape[dim + 1] = weights.shape
    return (gathered * weights.reshape(shape)).sum(dim + 1)


def _resize_spatial(x: torch.Tensor, dims: tuple[int, int], scale: float, antialiasing: bool) -> torch.Tensor:
    x = x.float()
    for dim in dims:
        x = _resize_axis(x, dim, math.ceil(x.shape[dim] * scale), scale, antialiasing)
    return x


def imresize(img: torch.Tensor, scale: float, antialiasing: bool = True) -> torch.Tensor:
    """MATLAB bicubic ``imresize`` of a ``(C, H, W)`` or ``(H, W)`` tensor → ``(C, ⌈H s⌉, ⌈W s⌉)`` / ``(⌈H s⌉, ⌈W s⌉)``
    float32, not rounded or clipped. The input is not modified."""
    if img.dim() == 2:
        return _resize_spatial(img, (0, 1), scale, antialiasing)
    if img.dim() == 3:
        return _resize_spatial(img, (1, 2), scale, antialiasing)
    raise ValueError(f"imresize takes a (C, H, W) or (H, W) tensor, got shape {tuple(img.shape)}.")


def imresize_np(img: np.ndarray, scale: float, antialiasing: bool = True) -> np.ndarray:
    """MATLAB bicubic ``imresize`` of an ``(H, W, C)`` or ``(H, W)`` array → ``(⌈H s⌉, ⌈W s⌉[, C])`` float32, not
    rounded or clipped."""
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize_np takes an (H, W, C) or (H, W) array, got shape {img.shape}.")
    return _resize_spatial(torch.from_numpy(np.asarray(img)), (0, 1), scale, antialiasing).numpy()
