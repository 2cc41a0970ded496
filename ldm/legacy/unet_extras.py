"""UNet names no model here builds, kept so that code importing them from
``ldm.modules.diffusionmodules.openaimodel`` keeps working.

- :func:`count_flops_attn` and :class:`ThopAttentionCounter`: operation counters in the form the ``thop``
  profiler calls (``hook(module, inputs, outputs)``), for the QKV attention layers;
- :class:`TransposedUpsample`: a learned ×2 upsampler that no configuration selects.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["ThopAttentionCounter", "TransposedUpsample", "count_flops_attn"]


def count_flops_attn(model: nn.Module, _x: tuple, y: tuple) -> None:
    """Add the multiply-adds of QKV attention to ``model.total_ops``.

    ``y[0]`` is the attention output ``(B, C, *spatial)``; with ``T = prod(spatial)`` positions the two
    products ``QᵀK`` and ``A·Vᵀ`` cost ``B · T² · C`` multiply-adds each.
    """
    batch, width, *spatial = y[0].shape
    positions = math.prod(spatial)
    model.total_ops += torch.DoubleTensor([2 * batch * width * positions * positions])


class ThopAttentionCounter:
    """Gives an attention module the ``count_flops`` hook ``thop.profile(custom_ops=...)`` looks for."""

    count_flops = staticmethod(count_flops_attn)


class TransposedUpsample(nn.Module):
    """Learned ×2 upsampling by one ``ks``×``ks`` stride-2 transposed convolution without padding.

    ``(B, channels, H, W) -> (B, out_channels, 2H + ks − 2, 2W + ks − 2)``.
    """

    def __init__(self, channels: int, out_channels: int | None = None, ks: int = 5) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.up = nn.ConvTranspose2d(channels, self.out_channels, kernel_size=ks, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)
