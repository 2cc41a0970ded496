"""Alias of :mod:`ldm.legacy.pixel_unet`, where the pixel-space DDPM UNet ``Model`` lives."""

from ldm.legacy.pixel_unet import Model, get_timestep_embedding

__all__ = ["Model", "get_timestep_embedding"]
