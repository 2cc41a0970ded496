"""The BSRGAN degradation pipelines ("Designing a Practical Degradation Model for Deep Blind Image Super-Resolution",
Zhang et al., ICCV 2021), shared by :mod:`.bsrgan` and :mod:`.bsrgan_light` through a :class:`Recipe`.

A high-quality image ``y`` becomes ``x = JPEG(shuffle[blur, blur, ↓, ↓, noise, JPEG, camera](y))``: the steps run
in a random order except that the first downsampling (to a random scale) always precedes the final one (to exactly
``1/sf``). With ``sf = 4`` the image is first halved with probability ¼ and the rest runs at ``sf = 2``.

Images are float ``(H, W, 3)`` in [0, 1] unless stated. All randomness is drawn from numpy's global RNG and the
``random`` module in the original's order, so seeding both reproduces the original's degradations.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ldm.modules.image_degradation.blur_resize import (
    add_resize,
    add_sharpening,
    convolve_channels,
    random_interpolation,
    scaled_size,
)
from ldm.modules.image_degradation.conversions import single2uint, uint2single
from ldm.modules.image_degradation.crops import modcrop_np, random_crop
from ldm.modules.image_degradation.cv_resize import cv_resize
from ldm.modules.image_degradation.kernels import fspecial_gaussian, shift_pixel
from ldm.modules.image_degradation.matlab_resize import imresize_np
from ldm.modules.image_degradation.noise import add_Gaussian_noise, add_Poisson_noise, add_speckle_noise

Step = Callable[[np.ndarray], np.ndarray]

#: Probabilities of: the camera (ISP) step acting, a JPEG step in the shuffle acting, the initial halving at sf=4.
ISP_PROB, JPEG_PROB, HALVING_PROB = 0.25, 0.9, 0.25


@dataclass(frozen=True)
class Recipe:
    """What the full and the light BSRGAN models do differently.

    ``add_blur(img, sf)`` and ``add_jpeg(img)`` are the model's own random blur and JPEG noise; ``pair_noise`` are
    the Gaussian noise levels of ``degradation_bsrgan``; ``variant_noise``, ``variant_second_blur`` (whether the
    second blur step acts) and ``variant_resize_prob`` (probability that the first downsampling is a random
    resize rather than a shifted-kernel blur and decimation) are ``degradation_bsrgan_variant``'s.
    """

    add_blur: Callable[[np.ndarray, int], np.ndarray]
    add_jpeg: Step
    pair_noise: tuple[int, int]
    variant_noise: tuple[int, int]
    variant_second_blur: bool
    variant_resize_prob: float


def _identity(image: np.ndarray) -> np.ndarray:
    return image


def _with_probability(probability: float, step: Step) -> Step:
    """``step`` applied if ``random.random() < probability`` (one draw per call), else the identity."""
    return lambda image: step(image) if random.random() < probability else image


def _maybe_halve(image: np.ndarray, sf: int) -> tuple[np.ndarray, int]:
    """At ``sf = 4``, with probability ¼: halve the image (random OpenCV interpolation or MATLAB bicubic, ½ each)
    and continue at ``sf = 2``."""
    if sf != 4 or random.random() >= HALVING_PROB:
        return image, sf
    if np.random.rand() < 0.5:
        halved = cv_resize(image, *scaled_size(image, 1 / 2), random_interpolation())
    else:
        halved = imresize_np(image, 1 / 2, True)
    return np.clip(halved, 0.0, 1.0), 2


def _first_downsampling(image: np.ndarray, sf: int, resize_prob: float) -> np.ndarray:
    """With probability ``resize_prob``: resize by ``1/s``, ``s ~ U(1, 2 sf)``, random OpenCV interpolation. Else
    blur with a 25 × 25 Gaussian (``σ ~ U(0.1, 0.6 sf)``) shifted by ``(sf − 1)/2`` pixels and keep every ``sf``-th
    pixel. Clipped to [0, 1]."""
    if random.random() < resize_prob:
        factor = 1 / random.uniform(1, 2 * sf)
        smaller = cv_resize(image, *scaled_size(image, factor), random_interpolation())
    else:
        kernel = shift_pixel(fspecial_gaussian(25, random.uniform(0.1, 0.6 * sf)), sf)
        smaller = convolve_channels(image, kernel / kernel.sum(), "mirror")[0::sf, 0::sf, ...]
    return np.clip(smaller, 0.0, 1.0)


def _final_downsampling(size: tuple[int, int]) -> Step:
    """Resize to ``size`` = ``(width, height)`` with a random OpenCV interpolation, clipped to [0, 1]."""
    return lambda image: np.clip(cv_resize(image, *size, random_interpolation()), 0.0, 1.0)


def _shuffled_order(count: int) -> list[int]:
    """A random permutation of ``0 .. count − 1`` (``random.sample``) with steps 2 and 3 swapped if 3 came first."""
    order = random.sample(range(count), count)
    first, final = order.index(2), order.index(3)
    if first > final:
        order[first], order[final] = 3, 2
    return order


def _run(image: np.ndarray, order: list[int], steps: dict[int, Step]) -> np.ndarray:
    for index in order:
        image = steps[index](image)
    return image


def _check_size(image: np.ndarray, original_shape: tuple[int, ...], sf: int, lq_patchsize: int) -> None:
    if min(image.shape[:2]) < lq_patchsize * sf:
        raise ValueError(
            f"img size ({original_shape[0]}X{original_shape[1]}) is too small! It needs both sides of at least "
            f"lq_patchsize * sf = {lq_patchsize * sf} pixels; pass a larger image or a smaller lq_patchsize."
        )


class _Camera:
    """The optional camera-ISP step: with probability ``probability`` (one draw per call, even without a model)
    ``(image, hq) ← isp_model.forward(image, hq)``; keeps the current ``hq``."""

    def __init__(self, isp_model: Any, hq: np.ndarray, probability: float) -> None:
        self.isp_model, self.hq, self.probability = isp_model, hq, probability

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if random.random() < self.probability and self.isp_model is not None:
            with torch.no_grad():
                image, self.hq = self.isp_model.forward(image.copy(), self.hq)
        return image


def degrade_pair(
    img: np.ndarray, sf: int, lq_patchsize: int, isp_model: Any, recipe: Recipe
) -> tuple[np.ndarray, np.ndarray]:
    """``degradation_bsrgan``: ``img`` (cut to a multiple of ``sf``, both sides at least ``lq_patchsize · sf``) →
    aligned random patches ``(lq (p, p, 3), hq (p sf, p sf, 3))``, ``p = lq_patchsize``; the seven steps are blur,
    blur, first and final downsampling, Gaussian noise, JPEG (probability 0.9) and camera ISP (probability ¼, if
    ``isp_model``), then a final JPEG."""
    image = modcrop_np(img, sf)
    _check_size(image, img.shape, sf, lq_patchsize)
    camera = _Camera(isp_model, image.copy(), ISP_PROB)
    image, step_sf = _maybe_halve(image, sf)
    steps = {
        0: lambda x: recipe.add_blur(x, sf=step_sf),
        1: lambda x: recipe.add_blur(x, sf=step_sf),
        2: lambda x: _first_downsampling(x, step_sf, 0.75),
        3: _final_downsampling(scaled_size(image, 1 / step_sf)),
        4: lambda x: add_Gaussian_noise(x, *recipe.pair_noise),
        5: _with_probability(JPEG_PROB, recipe.add_jpeg),
        6: camera,
    }
    image = recipe.add_jpeg(_run(image, _shuffled_order(7), steps))
    return random_crop(image, camera.hq, sf, lq_patchsize)


def degrade_variant(image: np.ndarray, sf: int, recipe: Recipe) -> dict[str, np.ndarray]:
    """``degradation_bsrgan_variant``: uint8 ``(H, W, 3)`` → ``{"image": uint8 (H // sf, W // sf, 3)}`` (the LR
    image of the whole input cut to a multiple of ``sf``); steps as in :func:`degrade_pair` without the camera,
    with the recipe's noise levels, second blur and first-downsampling mix."""
    hr = modcrop_np(uint2single(image), sf)
    lr, step_sf = _maybe_halve(hr, sf)
    second_blur: Step = (lambda x: recipe.add_blur(x, sf=step_sf)) if recipe.variant_second_blur else _identity
    steps = {
        0: lambda x: recipe.add_blur(x, sf=step_sf),
        1: second_blur,
        2: lambda x: _first_downsampling(x, step_sf, recipe.variant_resize_prob),
        3: _final_downsampling(scaled_size(lr, 1 / step_sf)),
        4: lambda x: add_Gaussian_noise(x, *recipe.variant_noise),
        5: _with_probability(JPEG_PROB, recipe.add_jpeg),
        6: _identity,
    }
    lr = recipe.add_jpeg(_run(lr, _shuffled_order(7), steps))
    return {"image": single2uint(lr)}


def _plus_order(shuffle_prob: float) -> list[int]:
    """With probability ``shuffle_prob`` a random order of the 13 steps; else ``0 .. 12`` with steps 2–5 and 9–12
    (the noises and camera of each half) shuffled among themselves."""
    if random.random() < shuffle_prob:
        return random.sample(range(13), 13)
    order = list(range(13))
    order[2:6] = random.sample(order[2:6], 4)
    order[9:13] = random.sample(order[9:13], 4)
    return order


def degrade_plus(
    img: np.ndarray,
    sf: int,
    shuffle_prob: float,
    use_sharp: bool,
    lq_patchsize: int,
    isp_model: Any,
    recipe: Recipe,
) -> tuple[np.ndarray, np.ndarray]:
    """``degradation_bsrgan_plus`` (BSRGAN + Real-ESRGAN): optional USM sharpening of the target, then twice (blur,
    random resize, Gaussian noise, Poisson noise (0.1), speckle noise (0.1), camera ISP (0.1)) with a JPEG between
    the halves, a resize to ``1/sf`` of the target, a final JPEG and aligned random patches ``(lq, hq)``."""
    image = modcrop_np(img, sf)
    _check_size(image, img.shape, sf, lq_patchsize)
    if use_sharp:
        image = add_sharpening(image)
    camera = _Camera(isp_model, image.copy(), 0.1)
    rare = 0.1
    half: dict[int, Step] = {
        0: lambda x: recipe.add_blur(x, sf=sf),
        1: lambda x: add_resize(x, sf=sf),
        2: lambda x: add_Gaussian_noise(x, noise_level1=2, noise_level2=25),
        3: _with_probability(rare, add_Poisson_noise),
        4: _with_probability(rare, add_speckle_noise),
        5: camera,
    }
    steps = {**half, 6: recipe.add_jpeg, **{index + 7: step for index, step in half.items()}}
    image = _run(image, _plus_order(shuffle_prob), steps)
    image = cv_resize(image, *scaled_size(camera.hq, 1 / sf), random_interpolation())
    return random_crop(recipe.add_jpeg(image), camera.hq, sf, lq_patchsize)
