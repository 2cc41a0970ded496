"""Swap the UNet's reference blocks for their inference variants in ``ldm.modules.fast``."""

from __future__ import annotations

import torch.nn as nn

from ldm.modules.fast.feedforward import GEGLUFeedForwardInference
from ldm.modules.fast.swap import replace_modules


def _fast_block(child: nn.Module) -> nn.Module | None:
    return GEGLUFeedForwardInference(child) if GEGLUFeedForwardInference.applies_to(child) else None


def swap_fast_blocks(module: nn.Module) -> int:
    """In place: every gated ``FeedForward`` becomes a ``GEGLUFeedForwardInference`` sharing its weights; returns
    how many modules were swapped."""
    return replace_modules(module, _fast_block)
