"""BSRGAN's degradation model, the light version (weaker blur, noise and JPEG) used by the LDM ``bsr_sr`` configs.

``degradation_bsrgan_variant`` is what ``ImageNetSR(degradation="bsrgan_light")`` applies. Against
:mod:`.bsrgan`: a quarter of the blur spread with smaller kernels, JPEG quality 80 … 95, and in the variant one blur
step, Gaussian noise levels 1 … 2 and a random resize (rather than a shifted-kernel decimation) with probability
0.8 in the first downsampling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ldm.modules.image_degradation.blur_resize import (
    LIGHT_BLUR,
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
from ldm.modules.image_degradation.pipeline import Recipe, degrade_pair, degrade_variant

__all__ = [
    "add_Gaussian_noise", "add_JPEG_noise", "add_Poisson_noise", "add_blur", "add_resize", "add_sharpening",
    "add_speckle_noise", "analytic_kernel", "anisotropic_Gaussian", "bicubic_degradation", "blur",
    "classical_degradation", "degradation_bsrgan", "degradation_bsrgan_variant", "dpsr_degradation", "fspecial",
    "fspecial_gaussian", "fspecial_laplacian", "gen_kernel", "gm_blur_kernel", "modcrop_np", "random_crop",
    "shift_pixel", "srmd_degradation",
]


def add_blur(img: np.ndarray, sf: int = 4) -> np.ndarray:
    """Random light Gaussian blur (mirrored borders), anisotropic or isotropic with probability ½ each: eigenvalues
    ``U(0, (4 + sf)/4)``, ``σ ~ U(0, (2 + 0.2 sf)/4)``, sizes 5 … 14 and 5 … 7 (:class:`.blur_resize.BlurRanges`)."""
    return random_blur(img, sf, LIGHT_BLUR)


def add_JPEG_noise(img: np.ndarray) -> np.ndarray:
    """JPEG round trip of the float RGB image at a quality ``random.randint(80, 95)``; float32 in [0, 1]."""
    return add_jpeg_artifacts(img, 80, 95)


RECIPE = Recipe(
    add_blur=add_blur,
    add_jpeg=add_JPEG_noise,
    pair_noise=(2, 8),
    variant_noise=(1, 2),
    variant_second_blur=False,
    variant_resize_prob=0.8,
)


def degradation_bsrgan(
    img: np.ndarray, sf: int = 4, lq_patchsize: int = 72, isp_model: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Light BSRGAN training pair from float ``(H, W, 3)`` ``img`` in [0, 1] (both sides ``>= lq_patchsize · sf``):
    returns ``(lq (p, p, 3), hq (p sf, p sf, 3))``, ``p = lq_patchsize``; Gaussian noise levels 2 … 8."""
    return degrade_pair(img, sf, lq_patchsize, isp_model, RECIPE)


def degradation_bsrgan_variant(image: np.ndarray, sf: int = 4, isp_model: Any = None) -> dict[str, np.ndarray]:
    """Light LR image of a uint8 ``(H, W, 3)`` image: ``{"image": uint8 (H // sf, W // sf, 3)}``. ``isp_model`` is
    accepted and unused, as in the original."""
    return degrade_variant(image, sf, RECIPE)
