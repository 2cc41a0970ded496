"""OpenCV's Gaussian kernel and Gaussian blur without OpenCV (``cv2.getGaussianKernel``, ``cv2.GaussianBlur``)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: OpenCV's fixed kernels for odd sizes up to 7 when no sigma is given.
SMALL_GAUSSIAN_KERNELS = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
}


def gaussian_kernel(size: int, sigma: float = 0.0) -> np.ndarray:
    """``cv2.getGaussianKernel(size, sigma)``: ``g_i ∝ exp(−(i − (size − 1)/2)² / (2σ²))``, summing to 1, float64.

    ``sigma <= 0`` means ``σ = 0.3 ((size − 1)/2 − 1) + 0.8`` (and OpenCV's fixed binomial-like taps for odd
    ``size <= 7``).
    """
    if sigma <= 0 and size in SMALL_GAUSSIAN_KERNELS:
        return np.array(SMALL_GAUSSIAN_KERNELS[size])
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    offsets = np.arange(size) - (size - 1) * 0.5
    taps = np.exp(-0.5 / (sigma * sigma) * offsets * offsets)
    return taps / taps.sum()


def gaussian_blur(image: np.ndarray, size: int, sigma: float = 0.0) -> np.ndarray:
    """``cv2.GaussianBlur(image, (size, size), sigma)`` of ``(H, W[, C])``: the separable Gaussian
    :func:`gaussian_kernel` along H and W, borders mirrored without repeating the edge (OpenCV's
    ``BORDER_REFLECT_101`` = SciPy's ``mirror``). Keeps the input's float dtype."""
    taps = gaussian_kernel(size, sigma).astype(image.dtype if image.dtype.kind == "f" else np.float32)
    rows = ndimage.correlate1d(image, taps, axis=0, mode="mirror")
    return ndimage.correlate1d(rows, taps, axis=1, mode="mirror")
