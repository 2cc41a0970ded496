"""The NSFW filter of Stable Diffusion's txt2img: the ``CompVis/stable-diffusion-safety-checker`` CLIP classifier.

It needs the ``diffusers`` package and that model's external weights (downloaded by ``from_pretrained`` or
present in the Hugging Face cache); nothing here runs unless :func:`check_safety` is called, and the sampling
scripts do not call it (they save images unfiltered).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ldm.image_io import load_replacement, numpy_to_pil

SAFETY_MODEL_ID = "CompVis/stable-diffusion-safety-checker"


@functools.cache
def safety_models(model_id: str = SAFETY_MODEL_ID) -> tuple[Any, Any]:
    """``(feature_extractor, StableDiffusionSafetyChecker)`` loaded once from ``model_id``."""
    try:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import AutoFeatureExtractor
    except ImportError as error:
        raise RuntimeError(
            f"check_safety needs the diffusers package ({error}); install diffusers and provide the "
            f"{model_id} weights"
        ) from error
    try:
        return AutoFeatureExtractor.from_pretrained(model_id), StableDiffusionSafetyChecker.from_pretrained(model_id)
    except OSError as error:
        raise RuntimeError(
            f"cannot load the safety checker weights {model_id!r} ({error}); download them into the Hugging Face "
            "cache or run with network access"
        ) from error


def check_safety(x_image: np.ndarray) -> tuple[np.ndarray, list[bool]]:
    """Flag NSFW images of a ``(B, H, W, 3)`` batch in [0, 1]; flagged ones are replaced by
    :func:`ldm.image_io.load_replacement`. Returns ``(images, has_nsfw_concept)``."""
    feature_extractor, checker = safety_models()
    clip_input = feature_extractor(numpy_to_pil(x_image), return_tensors="pt").pixel_values
    checked, has_nsfw_concept = checker(images=x_image, clip_input=clip_input)
    if checked.shape[0] != len(has_nsfw_concept):
        raise RuntimeError(f"safety checker returned {checked.shape[0]} images for {len(has_nsfw_concept)} flags")
    for index, flagged in enumerate(has_nsfw_concept):
        if flagged:
            checked[index] = load_replacement(checked[index])
    return checked, has_nsfw_concept
