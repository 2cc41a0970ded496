"""Latent diffusion models: autoencoders, the UNet, DDPM/LDM training and samplers, under the original's paths."""

from pathlib import Path as _Path

from ldm.shadowing import warn_if_shadowing as _warn_if_shadowing

_warn_if_shadowing(_Path(__file__).parent)
