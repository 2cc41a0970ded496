"""Stable Diffusion weights between our (original CompVis) layout and Hugging Face diffusers' layout.

The mapping lives in the package (``ldm.convert``); the benchmarks import it from here under its old names:

- ``UNetModel`` ↔ ``UNet2DConditionModel`` (``ldm.convert.unet``);
- ``AutoencoderKL`` ↔ diffusers ``AutoencoderKL`` (``ldm.convert.vae``);
- ``FrozenCLIPEmbedder`` ↔ transformers ``CLIPTextModel`` (``ldm.convert.clip_text``).
"""

from __future__ import annotations

from ldm.convert.clip_text import clip_to_diffusers
from ldm.convert.unet import unet_diffusers_config, unet_from_diffusers, unet_to_diffusers
from ldm.convert.vae import vae_diffusers_config, vae_from_diffusers, vae_to_diffusers

__all__ = [
    "clip_to_diffusers",
    "unet_diffusers_config",
    "unet_from_diffusers",
    "unet_to_diffusers",
    "vae_diffusers_config",
    "vae_from_diffusers",
    "vae_to_diffusers",
]
