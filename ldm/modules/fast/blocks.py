"""Swap the UNet's reference attention blocks for their inference variants in ``ldm.modules.fast``."""

from __future__ import annotations

import torch.nn as nn

from ldm.modules.attention import SpatialTransformer
from ldm.modules.fast.feedforward import GEGLUFeedForwardInference
from ldm.modules.fast.spatial_transformer import TokenSpatialTransformer
from ldm.modules.fast.swap import replace_modules


def _feedforward(child: nn.Module) -> nn.Module | None:
    return GEGLUFeedForwardInference(child) if GEGLUFeedForwardInference.applies_to(child) else None


def _spatial_transformer(child: nn.Module) -> nn.Module | None:
    return TokenSpatialTransformer(child) if type(child) is SpatialTransformer else None


def swap_fast_blocks(module: nn.Module) -> int:
    """In place: every gated ``FeedForward`` becomes a ``GEGLUFeedForwardInference`` and every
    ``SpatialTransformer`` a ``TokenSpatialTransformer`` (sharing the reference weights); returns how many modules
    were swapped. The feed-forwards go first, as a swapped transformer is not searched again."""
    return replace_modules(module, _feedforward) + replace_modules(module, _spatial_transformer)
