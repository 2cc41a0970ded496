"""Random blur and resize of the BSRGAN model, USM sharpening, and the classical (non-random) degradation models.

Images are float ``(H, W, C)`` in [0, 1]; ``⊛`` is 2-D convolution of every channel with a kernel ``k``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ldm.modules.image_degradation.cv_filters import gaussian_blur
from ldm.modules.image_degradation.cv_resize import INTER_AREA, INTER_CUBIC, INTER_LINEAR, cv_resize
from ldm.modules.image_degradation.kernels import anisotropic_Gaussian, fspecial_gaussian
from ldm.modules.image_degradation.matlab_resize import imresize_np


def convolve_channels(x: np.ndarray, k: np.ndarray, mode: str) -> np.ndarray:
    """``x ⊛ k`` per channel of ``(H, W, C)`` ``x`` with SciPy's border ``mode`` (``'mirror'`` is OpenCV's
    ``BORDER_REFLECT_101``, ``'wrap'`` circular); keeps ``x``'s dtype."""
    return ndimage.convolve(x, k[:, :, None], mode=mode)


def random_interpolation() -> int:
    """One of OpenCV's linear, cubic, area interpolations, uniformly (``random.choice``)."""
    return random.choice([INTER_LINEAR, INTER_CUBIC, INTER_AREA])


def scaled_size(image: np.ndarray, factor: float) -> tuple[int, int]:
    """``(⌊factor · W⌋, ⌊factor · H⌋)``: the ``(width, height)`` of ``image`` scaled by ``factor``."""
    return int(factor * image.shape[1]), int(factor * image.shape[0])


@dataclass(frozen=True)
class BlurRanges:
    """Distributions of ``add_blur``'s kernels at scale factor ``sf``.

    Anisotropic (probability ½): eigenvalues ``l1, l2 ~ U(0, variance_scale · (4 + sf))``, size
    ``anisotropic_size()``, angle ``U(0, π)``. Isotropic: size ``isotropic_size()``,
    ``σ ~ U(0, sigma_scale · (2 + 0.2 sf))``.
    """

    variance_scale: float
    sigma_scale: float
    anisotropic_size: Callable[[], int]
    isotropic_size: Callable[[], int]


#: The BSRGAN model's kernels: sizes 7, 9, …, 25.
FULL_BLUR = BlurRanges(1.0, 1.0, lambda: 2 * random.randint(2, 11) + 3, lambda: 2 * random.randint(2, 11) + 3)
#: The light model's: a quarter of the spread, sizes 5 … 14 (anisotropic) and 5 … 7 (isotropic).
LIGHT_BLUR = BlurRanges(0.25, 0.25, lambda: random.randint(2, 11) + 3, lambda: random.randint(2, 4) + 3)


def random_blur(img: np.ndarray, sf: int, ranges: BlurRanges) -> np.ndarray:
    """``img ⊛ k`` (mirrored borders) with a random Gaussian kernel ``k`` drawn from ``ranges``."""
    if random.random() < 0.5:
        spread = ranges.variance_scale * (4.0 + sf)
        l1, l2 = spread * random.random(), spread * random.random()
        size = ranges.anisotropic_size()
        kernel = anisotropic_Gaussian(ksize=size, theta=random.random() * np.pi, l1=l1, l2=l2)
    else:
        size = ranges.isotropic_size()
        kernel = fspecial_gaussian(size, ranges.sigma_scale * (2.0 + 0.2 * sf) * random.random())
    return convolve_channels(img, kernel, "mirror")


def add_resize(img: np.ndarray, sf: int = 4) -> np.ndarray:
    """Random rescale by ``s``: ``U(1, 2)`` with probability 0.2, ``U(0.5/sf, 1)`` with 0.7, else 1
    (``np.random.rand()`` picks), random OpenCV interpolation, clipped to [0, 1]."""
    branch = np.random.rand()
    if branch > 0.8:
        factor = random.uniform(1, 2)
    elif branch < 0.7:
        factor = random.uniform(0.5 / sf, 1)
    else:
        factor = 1.0
    return np.clip(cv_resize(img, *scaled_size(img, factor), random_interpolation()), 0.0, 1.0)


def add_sharpening(img: np.ndarray, weight: float = 0.5, radius: int = 50, threshold: int = 10) -> np.ndarray:
    """Unsharp masking (Real-ESRGAN): with ``B = G_r(I)`` the Gaussian blur of size ``r`` (``radius`` made odd,
    OpenCV's default σ), ``K = clip(I + weight (I − B), 0, 1)`` and ``M = G_r(1[255 |I − B| > threshold])``,
    returns ``M K + (1 − M) I``."""
    size = radius + 1 if radius % 2 == 0 else radius
    residual = img - gaussian_blur(img, size)
    mask = gaussian_blur((np.abs(residual) * 255 > threshold).astype(np.float32), size)
    sharpened = np.clip(img + weight * residual, 0, 1)
    return mask * sharpened + (1 - mask) * img


def bicubic_degradation(x: np.ndarray, sf: int = 3) -> np.ndarray:
    """``x↓sf``: MATLAB bicubic downscaling by ``1/sf`` (antialiased, :func:`imresize_np`)."""
    return imresize_np(x, scale=1 / sf)


def srmd_degradation(x: np.ndarray, k: np.ndarray, sf: int = 3) -> np.ndarray:
    """SRMD's model (Zhang et al., CVPR 2018): ``(x ⊛ k)↓sf``, circular convolution then bicubic downscaling."""
    return bicubic_degradation(convolve_channels(x, k, "wrap"), sf=sf)


def dpsr_degradation(x: np.ndarray, k: np.ndarray, sf: int = 3) -> np.ndarray:
    """DPSR's model (Zhang et al., CVPR 2019): ``(x↓sf) ⊛ k``, bicubic downscaling then circular convolution."""
    return convolve_channels(bicubic_degradation(x, sf=sf), k, "wrap")


def classical_degradation(x: np.ndarray, k: np.ndarray, sf: int = 3) -> np.ndarray:
    """The classical model ``(x ⊛ k)↓↓sf``: circular convolution, then every ``sf``-th pixel from the top left."""
    return convolve_channels(x, k, "wrap")[::sf, ::sf, ...]
