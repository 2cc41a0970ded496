"""``EncoderUNetModel``: the encoder half of the UNet with a pooling head (a noisy-image classifier / regressor).

``EncoderUNetModel(x (B, C, H, W), timesteps (B,)) -> (B, out_channels)``; re-exported by
:mod:`ldm.modules.diffusionmodules.openaimodel` under its original path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from ldm.modules.diffusionmodules.unet_blocks import (
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    convert_module_to_f16,
    convert_module_to_f32,
)
from ldm.modules.diffusionmodules.util import conv_nd, linear, normalization, timestep_embedding, zero_module

POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


class EncoderUNetModel(nn.Module):
    """The input blocks and middle block of :class:`UNetModel`, then a head chosen by ``pool``:

    - ``"adaptive"``: GroupNorm, SiLU, global average pooling, zero-initialised 1×1 conv;
    - ``"attention"``: GroupNorm, SiLU, :class:`AttentionPool2d` (needs ``num_head_channels``);
    - ``"spatial"`` / ``"spatial_v2"``: an MLP on the spatial means of every block's output, concatenated.

    Attention blocks use ``num_heads`` / ``num_head_channels`` as given (no legacy head rule). Extra positional
    and keyword arguments are accepted and ignored, as in the original.
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
            raise NotImplementedError(f"Unexpected {pool} pooling; EncoderUNetModel supports pool in {list(POOLS)}.")
        if pool == "attention" and num_head_channels == -1:
            raise ValueError("EncoderUNetModel: pool='attention' needs num_head_channels (the width per head).")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads

        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.use_checkpoint = use_checkpoint
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim)
        )

        def res_block(ch: int, out_ch: int | None = None, down: bool = False) -> ResBlock:
            return ResBlock(
                ch,
                time_embed_dim,
                dropout,
                out_channels=out_ch,
                dims=dims,
                use_checkpoint=use_checkpoint,
                use_scale_shift_norm=use_scale_shift_norm,
                down=down,
            )

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(
                ch,
                use_checkpoint=use_checkpoint,
                num_heads=num_heads,
                num_head_channels=num_head_channels,
                use_new_attention_order=use_new_attention_order,
            )

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3, padding=1))]
        )
        self._feature_size = model_channels
        ch = model_channels
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch
            if level != len(channel_mult) - 1:
                down = res_block(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, dims, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                ds *= 2
                self._feature_size += ch

        self.middle_block = TimestepEmbedSequential(res_block(ch), attention(ch), res_block(ch))
        self._feature_size += ch
        self.pool = pool
        if pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(conv_nd(dims, ch, out_channels, 1)),
                nn.Flatten(),
            )
        elif pool == "attention":
            self.out = nn.Sequential(
                normalization(ch), nn.SiLU(), AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels)
            )
        elif pool == "spatial":
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048), nn.ReLU(), nn.Linear(2048, self.out_channels)
            )
        else:
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048), normalization(2048), nn.SiLU(), nn.Linear(2048, self.out_channels)
            )

    def convert_to_fp16(self) -> None:
        """Cast the torso (input and middle blocks) to float16."""
        self.input_blocks.apply(convert_module_to_f16)
        self.middle_block.apply(convert_module_to_f16)

    def convert_to_fp32(self) -> None:
        """Cast the torso back to float32."""
        self.input_blocks.apply(convert_module_to_f32)
        self.middle_block.apply(convert_module_to_f32)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x (B, C, H, W)``, ``timesteps (B,)`` -> ``(B, out_channels)``."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        spatial = self.pool.startswith("spatial")
        results = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            if spatial:
                results.append(h.type(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            results.append(h.type(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(results, dim=-1))
        return self.out(h.type(x.dtype))
