"""Random noise of the BSRGAN degradation model on float ``(H, W, 3)`` images in [0, 1].

Randomness comes from numpy's global RNG and the ``random`` module exactly where the original model draws from
them, so seeding both (``np.random.seed``, ``random.seed``) reproduces the original's degradations.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image
from scipy.linalg import orth

from ldm.modules.image_degradation.conversions import single2uint, uint2single

#: BT.601 luma weights of R, G, B.
LUMA_WEIGHTS = [0.299, 0.587, 0.114]


def _channel_noise(shape: tuple[int, ...], sigma: float, branch: float, level_high: int) -> np.ndarray:
    """Zero-mean float32 noise for an ``(H, W, 3)`` image, one of three kinds chosen by ``branch`` ∈ [0, 1):

    ``> 0.6``: i.i.d. ``N(0, σ²)`` per pixel and channel; ``< 0.4``: one ``N(0, σ²)`` per pixel shared by the channels
    (gray noise); else: channel-correlated ``N(0, |L² Uᵀ D U|)`` per pixel, ``L = level_high / 255``, ``D`` diagonal
    with ``U(0, 1)`` entries and ``U`` an orthonormal basis of a ``U(0, 1)`` 3 × 3 matrix.
    """
    if branch > 0.6:
        return np.random.normal(0, sigma, shape).astype(np.float32)
    if branch < 0.4:
        return np.random.normal(0, sigma, (*shape[:2], 1)).astype(np.float32)
    scale = level_high / 255.0
    eigenvalues = np.diag(np.random.rand(3))
    basis = orth(np.random.rand(3, 3))
    covariance = np.abs(scale**2 * (basis.T @ eigenvalues @ basis))
    return np.random.multivariate_normal([0, 0, 0], covariance, shape[:2]).astype(np.float32)


def add_Gaussian_noise(img: np.ndarray, noise_level1: int = 2, noise_level2: int = 25) -> np.ndarray:
    """``clip(img + n, 0, 1)``: additive noise of level ``ℓ = random.randint(noise_level1, noise_level2)``,
    ``σ = ℓ / 255``, colour / gray / correlated with probabilities 0.4 / 0.4 / 0.2 (``np.random.rand()``),
    see :func:`_channel_noise`."""
    level = random.randint(noise_level1, noise_level2)
    branch = np.random.rand()
    return np.clip(img + _channel_noise(img.shape, level / 255.0, branch, noise_level2), 0.0, 1.0)


def add_speckle_noise(img: np.ndarray, noise_level1: int = 2, noise_level2: int = 25) -> np.ndarray:
    """``clip(x + x · n, 0, 1)`` with ``x = clip(img, 0, 1)``: multiplicative noise, ``n`` as in
    :func:`add_Gaussian_noise` but the kind is chosen by ``random.random()``."""
    level = random.randint(noise_level1, noise_level2)
    clean = np.clip(img, 0.0, 1.0)
    branch = random.random()
    return np.clip(clean + clean * _channel_noise(img.shape, level / 255.0, branch, noise_level2), 0.0, 1.0)


def _quantised(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to the 8-bit grid: ``clip(round(255 x), 0, 255) / 255``."""
    return np.clip((x * 255.0).round(), 0, 255) / 255.0


def _photon_counts(x: np.ndarray, photons: float) -> np.ndarray:
    """``Poisson(photons · x) / photons`` as float32: a shot-noise sample with mean ``x``."""
    return np.random.poisson(x * photons).astype(np.float32) / photons


def add_Poisson_noise(img: np.ndarray) -> np.ndarray:
    """Shot noise: with ``x`` the image quantised to 8 bits and ``v = 10^(2 u + 2)``, ``u ~ U(0, 1)``, either
    ``Poisson(v x) / v`` per channel or (probability ½) ``x + Poisson(v y) / v − y`` with ``y`` the quantised BT.601
    luma, clipped to [0, 1]."""
    clean = _quantised(img)
    photons = 10 ** (2 * random.random() + 2.0)
    if random.random() < 0.5:
        return np.clip(_photon_counts(clean, photons), 0.0, 1.0)
    luma = _quantised(np.dot(clean[..., :3], LUMA_WEIGHTS))
    noisy = clean.copy()
    noisy += (_photon_counts(luma, photons) - luma)[:, :, None]
    return np.clip(noisy, 0.0, 1.0)


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode the RGB float image (8-bit quantised) as a baseline JPEG at ``quality`` (4:2:0 chroma, as OpenCV's
    ``imencode`` with ``IMWRITE_JPEG_QUALITY``) with Pillow, decode it, return float32 in [0, 1]."""
    buffer = io.BytesIO()
    Image.fromarray(single2uint(img)).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return uint2single(np.asarray(decoded.convert("RGB")))


def add_jpeg_artifacts(img: np.ndarray, lowest_quality: int, highest_quality: int) -> np.ndarray:
    """JPEG compression artefacts: :func:`jpeg_roundtrip` at quality ``random.randint(lowest, highest)``."""
    return jpeg_roundtrip(img, random.randint(lowest_quality, highest_quality))
