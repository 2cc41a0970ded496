"""Blur kernels of the BSRGAN degradation model (MATLAB ``fspecial`` equivalents, Gaussian and shifted kernels)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.signal import convolve2d


def _normalised(kernel: np.ndarray) -> np.ndarray:
    return kernel / np.sum(kernel)


def _centred_grid(size: int) -> np.ndarray:
    """Offsets ``i − (size − 1)/2`` of the ``size`` taps from the kernel centre (half-integers for even sizes)."""
    return np.arange(size) - (size - 1) / 2.0


def analytic_kernel(k: np.ndarray) -> np.ndarray:
    """The ×4 kernel equivalent to applying the ×2 kernel ``k`` twice (``(n, n)`` → ``(2n − 1 − 2⌊n/2⌋,) * 2``).

    ``K = k ∗ k↑2`` (``k↑2``: ``k`` with a zero between taps), i.e. ``K[2r + i, 2c + j] += k[r, c] k[i, j]`` of size
    ``3n − 2``, cropped by ``⌊n/2⌋`` on every side and normalised to sum 1.
    """
    size = k.shape[0]
    dilated = np.zeros((2 * size - 1, 2 * size - 1))
    dilated[::2, ::2] = k
    big = convolve2d(dilated, k, mode="full")
    edge = size // 2
    return _normalised(big[edge:-edge, edge:-edge])


def gm_blur_kernel(mean: list[float] | np.ndarray, cov: np.ndarray, size: int = 15) -> np.ndarray:
    """``(size, size)`` 2-D normal-density kernel ``k[y, x] ∝ exp(−½ (p − μ)ᵀ Σ⁻¹ (p − μ))``,
    ``p = (x − (size−1)/2, y − (size−1)/2)``, normalised to sum 1 (``mean`` = μ, ``cov`` = Σ, both in (x, y) order)."""
    offsets = _centred_grid(size)
    points = np.stack(np.meshgrid(offsets, offsets), axis=-1) - np.asarray(mean, dtype=float)
    quadratic = np.einsum("...i,ij,...j->...", points, np.linalg.inv(np.asarray(cov, dtype=float)), points)
    return _normalised(np.exp(-0.5 * quadratic))


def anisotropic_Gaussian(ksize: int = 15, theta: float = np.pi, l1: float = 6, l2: float = 6) -> np.ndarray:
    """``(ksize, ksize)`` Gaussian kernel with covariance ``Σ = R(θ) diag(l1, l2) R(θ)ᵀ`` (variance ``l1`` along the
    direction at angle ``θ``, ``l2`` across it; ``l1 = l2`` is isotropic), normalised to sum 1."""
    cos, sin = np.cos(theta), np.sin(theta)
    rotation = np.array([[cos, -sin], [sin, cos]])
    covariance = rotation @ np.diag([l1, l2]) @ rotation.T
    return gm_blur_kernel(mean=[0, 0], cov=covariance, size=ksize)


def gen_kernel(
    k_size: np.ndarray = np.array([15, 15]),
    scale_factor: np.ndarray = np.array([4, 4]),
    min_var: float = 0.6,
    max_var: float = 10.0,
    noise_level: float = 0,
) -> np.ndarray:
    """Random anisotropic Gaussian kernel (the BlindSR kernel generator), shifted to align with ``scale_factor``.

    ``λ1, λ2 ~ U(min_var, max_var)``, ``θ ~ U(0, π)`` (three ``np.random.rand()`` draws in that order), then a
    multiplicative noise ``1 + U(−noise_level, noise_level)`` per tap; ``Σ = Q(θ) diag(λ1, λ2) Q(θ)ᵀ`` and the
    centre ``μ = ⌊k_size / 2⌋ − (scale_factor − 1)/2``: ``k[y, x] ∝ exp(−½ (p − μ)ᵀ Σ⁻¹ (p − μ)) (1 + n[y, x])``,
    ``p = (x, y)``, normalised to sum 1. Shape ``(k_size[1], k_size[0])`` (square sizes in practice).
    """
    lambda_1 = min_var + np.random.rand() * (max_var - min_var)
    lambda_2 = min_var + np.random.rand() * (max_var - min_var)
    theta = np.random.rand() * np.pi
    noise = -noise_level + np.random.rand(*k_size) * noise_level * 2
    cos, sin = np.cos(theta), np.sin(theta)
    rotation = np.array([[cos, -sin], [sin, cos]])
    precision = np.linalg.inv(rotation @ np.diag([lambda_1, lambda_2]) @ rotation.T)
    centre = k_size // 2 - 0.5 * (scale_factor - 1)
    points = np.stack(np.meshgrid(range(k_size[0]), range(k_size[1])), axis=-1) - centre
    quadratic = np.einsum("...i,ij,...j->...", points, precision, points)
    return _normalised(np.exp(-0.5 * quadratic) * (1 + noise))


def fspecial_gaussian(hsize: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', hsize, sigma)``: ``h ∝ exp(−(x² + y²) / (2σ²))`` on the centred
    ``(hsize, hsize)`` grid, taps below ``eps · max(h)`` set to 0, normalised to sum 1."""
    offsets = _centred_grid(hsize)
    h = np.exp(-(offsets[None, :] ** 2 + offsets[:, None] ** 2) / (2 * sigma**2))
    h[h < np.finfo(float).eps * h.max()] = 0
    total = h.sum()
    return h / total if total != 0 else h


def fspecial_laplacian(alpha: float) -> np.ndarray:
    """MATLAB ``fspecial('laplacian', alpha)``: the 3×3 Laplacian ``[[a, b, a], [b, −4, b], [a, b, a]] / (α + 1)``
    with ``a = α``, ``b = 1 − α`` and ``α`` clipped to [0, 1]."""
    alpha = min(max(alpha, 0), 1)
    corner, edge = alpha / (alpha + 1), (1 - alpha) / (alpha + 1)
    return np.array([[corner, edge, corner], [edge, -4 / (alpha + 1), edge], [corner, edge, corner]])


def fspecial(filter_type: str, *args, **kwargs) -> np.ndarray:
    """MATLAB ``fspecial``: ``'gaussian'`` → :func:`fspecial_gaussian`, ``'laplacian'`` → :func:`fspecial_laplacian`."""
    makers = {"gaussian": fspecial_gaussian, "laplacian": fspecial_laplacian}
    if filter_type not in makers:
        raise ValueError(f"fspecial: filter_type {filter_type!r} is not implemented; use 'gaussian' or 'laplacian'.")
    return makers[filter_type](*args, **kwargs)


def _shift_axis(x: np.ndarray, axis: int, shift: float) -> np.ndarray:
    """Linear interpolation of ``x`` along ``axis`` at ``clip(i + shift, 0, n − 1)`` for ``i = 0 .. n − 1``."""
    length = x.shape[axis]
    position = np.clip(np.arange(length) + shift, 0, length - 1)
    left = np.minimum(np.floor(position).astype(np.int64), max(length - 2, 0))
    right = np.minimum(left + 1, length - 1)
    shape = [1] * x.ndim
    shape[axis] = length
    weight = (position - left).reshape(shape)
    return np.take(x, left, axis=axis) * (1 - weight) + np.take(x, right, axis=axis) * weight


def shift_pixel(x: np.ndarray, sf: int, upper_left: bool = True) -> np.ndarray:
    """Shift ``(H, W)`` or ``(H, W, C)`` ``x`` by ``±(sf − 1)/2`` pixels along both axes (bilinear, edges clamped).

    ``y[i, j] = x(clip(i + d, 0, H − 1), clip(j + d, 0, W − 1))`` with ``d = (sf − 1)/2`` for ``upper_left``, else
    ``−(sf − 1)/2``, ``x(·, ·)`` the bilinear interpolant (SciPy's linear ``interp2d``). Aligns a kernel with the
    top-left pixel of each ``sf × sf`` cell. 2-D input gives float64; 3-D input keeps its dtype.
    """
    shift = (sf - 1) * 0.5 if upper_left else -(sf - 1) * 0.5
    shifted = _shift_axis(_shift_axis(x.astype(np.float64), 0, shift), 1, shift)
    return shifted if x.ndim == 2 else shifted.astype(x.dtype)


def blur(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Blur each image of ``x`` ``(N, C, H, W)`` with its own kernel ``k`` ``(N, 1, h, w)`` → ``(N, C, H', W')``.

    ``y[n, c] = x[n, c] ⋆ k[n]`` (cross-correlation) after replicate padding: ``(h − 1)//2`` columns on the left
    and top, ``(w − 1)//2`` on the right and bottom (so odd square kernels keep the size).
    """
    n, c = x.shape[:2]
    pad_h, pad_w = (k.shape[-2] - 1) // 2, (k.shape[-1] - 1) // 2
    padded = torch.nn.functional.pad(x, pad=(pad_h, pad_w, pad_h, pad_w), mode="replicate")
    weight = k.repeat_interleave(c, dim=0)
    out = torch.nn.functional.conv2d(padded.reshape(1, n * c, *padded.shape[2:]), weight, groups=n * c)
    return out.reshape(n, c, *out.shape[2:])
