"""The original module path of the diffusion models: configs name ``ldm.models.diffusion.ddpm.<Class>``.

The classes live beside it, each in its own file:

- :class:`DDPM` — the Lightning module of pixel-space diffusion (:mod:`~ldm.models.diffusion.denoising_diffusion`);
- :class:`LatentDiffusion` — diffusion on autoencoder latents (:mod:`~ldm.models.diffusion.latent_diffusion`);
- :class:`DiffusionWrapper` — the UNet with its conditioning plumbing (:mod:`~ldm.models.diffusion.diffusion_wrapper`);
- :class:`Layout2ImgDiffusion` — bounding-box conditioning, kept for its config path (:mod:`ldm.legacy`);
- SD 2.x: :class:`LatentInpaintDiffusion`, :class:`LatentDepth2ImageDiffusion` and their base
  :class:`LatentFinetuneDiffusion` (:mod:`~ldm.models.diffusion.finetune_diffusion`), :class:`LatentUpscaleDiffusion`
  (:mod:`~ldm.models.diffusion.upscale_diffusion`), :class:`ImageEmbeddingConditionedLatentDiffusion` (unCLIP,
  :mod:`~ldm.models.diffusion.unclip_diffusion`);
- the equations themselves: :class:`~ldm.models.diffusion.gaussian_diffusion.GaussianDiffusion`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ldm.legacy.layout_diffusion import Layout2ImgDiffusion
from ldm.models.diffusion.conditioning import CONDITIONING_KEYS
from ldm.models.diffusion.denoising_diffusion import DDPM
from ldm.models.diffusion.diffusion_wrapper import DiffusionWrapper, disabled_train
from ldm.models.diffusion.finetune_diffusion import (
    LatentDepth2ImageDiffusion,
    LatentFinetuneDiffusion,
    LatentInpaintDiffusion,
    LatentUpscaleFinetuneDiffusion,
)
from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.models.diffusion.unclip_diffusion import ImageEmbeddingConditionedLatentDiffusion
from ldm.models.diffusion.upscale_diffusion import LatentUpscaleDiffusion

#: ``DiffusionWrapper`` keyword for each conditioning kind, under the original's module-level name.
__conditioning_keys__ = CONDITIONING_KEYS

__all__ = [
    "DDPM",
    "DiffusionWrapper",
    "ImageEmbeddingConditionedLatentDiffusion",
    "LatentDepth2ImageDiffusion",
    "LatentDiffusion",
    "LatentFinetuneDiffusion",
    "LatentInpaintDiffusion",
    "LatentUpscaleDiffusion",
    "LatentUpscaleFinetuneDiffusion",
    "Layout2ImgDiffusion",
    "disabled_train",
    "uniform_on_device",
]


def uniform_on_device(r1: float, r2: float, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """Uniform draws on the interval between ``r2`` and ``r1``: (r1 − r2) · U[0, 1) + r2, of ``shape``."""
    return (r1 - r2) * torch.rand(*shape, device=device) + r2
