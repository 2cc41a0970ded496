"""``EncoderUNetModel``: the encoder half of the UNet with a pooling head (a noisy-image classifier / regressor).

``EncoderUNetModel(x (B, C, H, W), timesteps (B,)) -> (B, out_channels)``. Its stem, input levels and middle
block are built by :func:`ldm.modules.diffusionmodules.unet_plan.build_torso`, as ``UNetModel``'s are;
re-exported by :mod:`ldm.modules.diffusionmodules.openaimodel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from ldm.modules.diffusionmodules.unet_blocks import (
    AttentionBlock,
    AttentionPool2d,
    cast_torso,
)
from ldm.modules.diffusionmodules.unet_plan import UNetParts, build_torso, level_plan, time_embedding_mlp
from ldm.modules.diffusionmodules.util import conv_nd, normalization, timestep_embedding, zero_module
from ldm.util import SettingError, UnsupportedSettingError

POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


def _pool_head(pool: str, width: int, features: int, out_channels: int, dims: int, pooled_size: int,
               num_head_channels: int) -> nn.Sequential:
    """The head after the middle block; ``width`` is its input width, ``features`` the spatial heads' input."""
    if pool == "adaptive":  # (B, width, h, w) -> (B, out_channels)
        conv = zero_module(conv_nd(dims, width, out_channels, 1))
        return nn.Sequential(normalization(width), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)), conv, nn.Flatten())
    if pool == "attention":  # (B, width, h, w) -> (B, out_channels)
        pooling = AttentionPool2d(pooled_size, width, num_head_channels, out_channels)
        return nn.Sequential(normalization(width), nn.SiLU(), pooling)
    hidden = 2048  # spatial heads: (B, features) -> (B, out_channels)
    middle = [nn.ReLU()] if pool == "spatial" else [normalization(hidden), nn.SiLU()]
    return nn.Sequential(nn.Linear(features, hidden), *middle, nn.Linear(hidden, out_channels))


class EncoderUNetModel(nn.Module):
    """The stem, input blocks and middle block of :class:`UNetModel`, then a head chosen by ``pool``:

    - ``"adaptive"``: GroupNorm, SiLU, global average pooling, zero-initialised 1×1 conv;
    - ``"attention"``: GroupNorm, SiLU, :class:`AttentionPool2d` (needs ``num_head_channels``);
    - ``"spatial"`` / ``"spatial_v2"``: an MLP on the spatial means of every block's output, concatenated
      (``_feature_size`` values).

    Attention blocks use ``num_heads`` / ``num_head_channels`` as given. ``use_fp16`` runs the torso in
    float16, as ``UNetModel``'s does; the head stays float32. Extra positional and keyword arguments are
    accepted and ignored.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "adaptive",
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise UnsupportedSettingError(f"EncoderUNetModel has no {pool!r} pooling; choose pool from {list(POOLS)}.")
        if pool == "attention" and num_head_channels == -1:
            raise SettingError("EncoderUNetModel: pool='attention' needs num_head_channels, the width per head.")
        self.in_channels, self.out_channels, self.model_channels = in_channels, out_channels, model_channels
        self.channel_mult, self.num_res_blocks = channel_mult, num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.num_heads, self.num_head_channels = num_heads, num_head_channels
        self.num_heads_upsample = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.dropout, self.conv_resample, self.use_checkpoint = dropout, conv_resample, use_checkpoint
        self.dtype, self.pool = torch.float32, pool

        self.time_embed = time_embedding_mlp(model_channels)
        attention = partial(
            _attention_block,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_checkpoint=use_checkpoint,
            use_new_attention_order=use_new_attention_order,
        )
        parts = UNetParts(4 * model_channels, dropout, dims, use_checkpoint, use_scale_shift_norm, resblock_updown,
                          conv_resample, attention)
        levels = level_plan(model_channels, channel_mult, attention_resolutions)
        self.input_blocks, self.middle_block, widths = build_torso(
            parts, in_channels, model_channels, levels, num_res_blocks
        )
        self._feature_size = sum(widths)
        pooled_size = image_size // 2 ** (len(levels) - 1)
        self.out = _pool_head(pool, widths[-1], self._feature_size, out_channels, dims, pooled_size, num_head_channels)
        if use_fp16:
            self.convert_to_fp16()

    def convert_to_fp16(self) -> None:
        """Cast the torso (input and middle blocks) to float16; group norms keep computing in float32."""
        self.dtype = torch.float16
        cast_torso((self.input_blocks, self.middle_block), self.dtype)

    def convert_to_fp32(self) -> None:
        """Cast the torso back to float32."""
        self.dtype = torch.float32
        cast_torso((self.input_blocks, self.middle_block), self.dtype)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x (B, C, H, W)``, ``timesteps (B,)`` -> ``(B, out_channels)``."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels)).type(self.dtype)  # (B, E)
        h = x.type(self.dtype)  # (B, C, H, W)
        means = []  # per block (B, width), for the spatial heads
        for block in (*self.input_blocks, self.middle_block):
            h = block(h, emb)  # (B, width, H', W')
            if self.pool.startswith("spatial"):
                means.append(h.type(x.dtype).mean(dim=tuple(range(2, h.ndim))))
        if means:
            return self.out(torch.cat(means, dim=-1))  # (B, out_channels)
        return self.out(h.type(x.dtype))  # (B, out_channels)


def _attention_block(
    width: int, decoder: bool, *, num_heads: int, num_head_channels: int, use_checkpoint: bool,
    use_new_attention_order: bool,
) -> AttentionBlock:
    return AttentionBlock(
        width,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        use_checkpoint=use_checkpoint,
        use_new_attention_order=use_new_attention_order,
    )
