"""BSRGAN's degradation model for blind super-resolution training (``bsr_sr``), the full-strength version.

``degradation_bsrgan_variant`` is what ``ImageNetSR(degradation="bsrgan")`` applies; see :mod:`.pipeline` for the
model and :mod:`.bsrgan_light` for the milder one. OpenCV is not needed: its resizes, blurs and JPEG codec are
reproduced by :mod:`.cv_resize`, :mod:`.cv_filters` and Pillow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ldm.modules.image_degradation.blur_resize import (
    FULL_BLUR,
    add_resize,
    add_sharpening,
    bicubic_degradation,
    classical_degradation,
    dpsr_degradation,
    random_blur,
    srmd_degradation,
)
from ldm.modules.image_degradation.crops import modcrop_np, random_crop
from ldm.modules.image_degradation.kernels import (
    analytic_kernel,
    anisotropic_Gaussian,
    blur,
    fspecial,
    fspecial_gaussian,
    fspecial_laplacian,
    gen_kernel,
    gm_blur_kernel,
    shift_pixel,
)
from ldm.modules.image_degradation.noise import (
    add_Gaussian_noise,
    add_jpeg_artifacts,
    add_Poisson_noise,
    add_speckle_noise,
)
from ldm.modules.image_degradation.pipeline import Recipe, degrade_pair, degrade_plus, degrade_variant

__all__ = [
    "add_Gaussian_noise", "add_JPEG_noise", "add_Poisson_noise", "add_blur", "add_resize", "add_sharpening",
    "add_speckle_noise", "analytic_kernel", "anisotropic_Gaussian", "bicubic_degradation", "blur",
    "classical_degradation", "degradation_bsrgan", "degradation_bsrgan_plus", "degradation_bsrgan_variant",
    "dpsr_degradation", "fspecial", "fspecial_gaussian", "fspecial_laplacian", "gen_kernel", "gm_blur_kernel",
    "modcrop_np", "random_crop", "shift_pixel", "srmd_degradation",
]


def add_blur(img: np.ndarray, sf: int = 4) -> np.ndarray:
    """Random Gaussian blur (mirrored borders), anisotropic or isotropic with probability ½ each: eigenvalues
    ``U(0, 4 + sf)``, ``σ ~ U(0, 2 + 0.2 sf)``, kernel sizes 7, 9, …, 25 (see :class:`.blur_resize.BlurRanges`)."""
    return random_blur(img, sf, FULL_BLUR)


def add_JPEG_noise(img: np.ndarray) -> np.ndarray:
    """JPEG round trip of the float RGB image at a quality ``random.randint(30, 95)``; float32 in [0, 1]."""
    return add_jpeg_artifacts(img, 30, 95)


RECIPE = Recipe(
    add_blur=add_blur,
    add_jpeg=add_JPEG_noise,
    pair_noise=(2, 25),
    variant_noise=(2, 25),
    variant_second_blur=True,
    variant_resize_prob=0.75,
)


def degradation_bsrgan(
    img: np.ndarray, sf: int = 4, lq_patchsize: int = 72, isp_model: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """BSRGAN training pair from float ``(H, W, 3)`` ``img`` in [0, 1] (both sides ``>= lq_patchsize · sf``):
    returns ``(lq (p, p, 3), hq (p sf, p sf, 3))``, ``p = lq_patchsize``; Gaussian noise levels 2 … 25."""
    return degrade_pair(img, sf, lq_patchsize, isp_model, RECIPE)


def degradation_bsrgan_variant(image: np.ndarray, sf: int = 4, isp_model: Any = None) -> dict[str, np.ndarray]:
    """LR image of a uint8 ``(H, W, 3)`` image: ``{"image": uint8 (H // sf, W // sf, 3)}`` (two blurs, noise levels
    2 … 25, JPEG quality 30 … 95). ``isp_model`` is accepted and unused, as in the original."""
    return degrade_variant(image, sf, RECIPE)


def degradation_bsrgan_plus(
    img: np.ndarray,
    sf: int = 4,
    shuffle_prob: float = 0.5,
    use_sharp: bool = True,
    lq_patchsize: int = 64,
    isp_model: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """BSRGAN + Real-ESRGAN training pair (twice blur, resize, Gaussian, Poisson, speckle noise, camera; JPEG):
    float ``(H, W, 3)`` in [0, 1] → ``(lq (p, p, 3), hq (p sf, p sf, 3))``, ``p = lq_patchsize``."""
    return degrade_plus(img, sf, shuffle_prob, use_sharp, lq_patchsize, isp_model, RECIPE)
