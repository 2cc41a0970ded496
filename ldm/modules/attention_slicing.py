"""Attention slicing: bound the memory of every softmax attention in a model by running it on chunks of queries.

The ``(queries × keys)`` scores of one attention call grow with the square of the image area (a 1024 px
Stable Diffusion image has 16384 latent positions at the first UNet level, 1 GiB of float32 scores per head
and image). Each query row's softmax is independent of the others, so chunks of at most ``slice_size`` query
positions give the same output while holding only ``slice_size × keys`` scores at a time.
"""

from __future__ import annotations

import torch.nn as nn

from ldm.modules.attention import CrossAttention
from ldm.modules.diffusionmodules.model import AttnBlock

__all__ = ["set_attention_slicing"]


def set_attention_slicing(model: nn.Module, slice_size: int | None) -> int:
    """Set ``slice_size`` on every ``CrossAttention`` (UNet) and ``AttnBlock`` (autoencoder) in ``model``;
    ``None`` turns slicing off. Returns the number of attention modules set."""
    if slice_size is not None and slice_size < 1:
        raise ValueError(
            f"attention slice_size={slice_size} must be a positive number of query positions "
            "(e.g. 1024), or None to turn slicing off."
        )
    count = 0
    for module in model.modules():
        if isinstance(module, (CrossAttention, AttnBlock)):
            module.slice_size = slice_size
            count += 1
    return count
