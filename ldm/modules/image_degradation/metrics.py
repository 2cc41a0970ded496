"""Image quality metrics on ``[0, 255]`` images: PSNR and SSIM (as MATLAB computes them)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ldm.modules.image_degradation.cv_filters import gaussian_kernel

#: SSIM's stabilising constants ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²`` for ``L = 255``.
SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _cropped_pair(img1: np.ndarray, img2: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    if img1.shape != img2.shape:
        raise ValueError(f"Input images must have the same dimensions, got {img1.shape} and {img2.shape}.")
    height, width = img1.shape[:2]
    window = (slice(border, height - border), slice(border, width - border))
    return img1[window], img2[window]


def calculate_psnr(img1: np.ndarray, img2: np.ndarray, border: int = 0) -> float:
    """``PSNR = 20 log10(255 / √MSE)`` over all pixels and channels, ``border`` pixels shaved off each side;
    ``inf`` for identical images."""
    a, b = _cropped_pair(img1, img2, border)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 20 * math.log10(255.0 / math.sqrt(mse))


def _local_mean(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Gaussian-weighted local mean over the 11 × 11 windows that lie inside ``x`` ("valid" part)."""
    smoothed = ndimage.correlate1d(ndimage.correlate1d(x, taps, axis=0), taps, axis=1)
    edge = len(taps) // 2
    return smoothed[edge:-edge, edge:-edge]


def ssim(img1: np.ndarray, img2: np.ndarray) -> float:
    """Mean SSIM of two ``(H, W)`` images in [0, 255] (Wang et al. 2004, 11 × 11 Gaussian window, σ = 1.5):

    ``SSIM = mean[(2 μ1 μ2 + C1)(2 σ12 + C2) / ((μ1² + μ2² + C1)(σ1² + σ2² + C2))]`` over the windows inside the image.
    """
    a, b = img1.astype(np.float64), img2.astype(np.float64)
    taps = gaussian_kernel(11, 1.5)
    mu1, mu2 = _local_mean(a, taps), _local_mean(b, taps)
    var1 = _local_mean(a * a, taps) - mu1**2
    var2 = _local_mean(b * b, taps) - mu2**2
    covariance = _local_mean(a * b, taps) - mu1 * mu2
    numerator = (2 * mu1 * mu2 + SSIM_C1) * (2 * covariance + SSIM_C2)
    denominator = (mu1**2 + mu2**2 + SSIM_C1) * (var1 + var2 + SSIM_C2)
    return float(np.mean(numerator / denominator))


def calculate_ssim(img1: np.ndarray, img2: np.ndarray, border: int = 0) -> float:
    """:func:`ssim` of ``(H, W)`` / ``(H, W, 1)`` images, or its mean over the channels of ``(H, W, 3)`` images,
    ``border`` pixels shaved off each side."""
    a, b = _cropped_pair(img1, img2, border)
    if a.ndim == 2:
        return ssim(a, b)
    if a.ndim == 3 and a.shape[2] == 1:
        return ssim(a[:, :, 0], b[:, :, 0])
    if a.ndim == 3 and a.shape[2] == 3:
        return float(np.mean([ssim(a[:, :, c], b[:, :, c]) for c in range(3)]))
    raise ValueError(f"calculate_ssim takes (H, W), (H, W, 1) or (H, W, 3) images, got shape {img1.shape}.")
