"""Small decoders and latent rescalers built from the autoencoder's blocks (the original ``model.py`` extras).

``LatentRescaler`` resizes a latent by a factor between two stacks of ResnetBlocks; ``MergedRescaleEncoder`` /
``MergedRescaleDecoder`` put it behind an Encoder / in front of a Decoder; ``Upsampler`` maps a latent of
``in_size`` to an image of ``out_size``; ``FirstStagePostProcessor`` turns a frozen first stage's latent into
features. Re-exported by :mod:`ldm.modules.diffusionmodules.model` under their original paths.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.diffusionmodules.model import (
    AttnBlock,
    Decoder,
    Downsample,
    Encoder,
    Normalize,
    ResnetBlock,
    Upsample,
    nonlinearity,
)
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)


def _plain_block(in_channels: int, out_channels: int, dropout: float = 0.0) -> ResnetBlock:
    return ResnetBlock(in_channels=in_channels, out_channels=out_channels, temb_channels=0, dropout=dropout)


class SimpleDecoder(nn.Module):
    """``(B, C, H, W) -> (B, out_channels, 2H, 2W)``: 1×1 conv, ResnetBlocks C -> 2C -> 4C -> 2C, 1×1 conv back
    to C, a ×2 Upsample, then GroupNorm, swish and a 3×3 conv."""

    def __init__(self, in_channels: int, out_channels: int, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        c = in_channels
        self.model = nn.ModuleList([
            nn.Conv2d(c, c, 1),
            _plain_block(c, 2 * c),
            _plain_block(2 * c, 4 * c),
            _plain_block(4 * c, 2 * c),
            nn.Conv2d(2 * c, c, 1),
            Upsample(c, with_conv=True),
        ])
        self.norm_out = Normalize(c)
        self.conv_out = nn.Conv2d(c, out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model:
            x = layer(x, None) if isinstance(layer, ResnetBlock) else layer(x)
        return self.conv_out(nonlinearity(self.norm_out(x)))


class UpsampleDecoder(nn.Module):
    """Per level ``num_res_blocks + 1`` ResnetBlocks to ``ch·ch_mult[level]`` channels and a ×2 Upsample between
    levels, then GroupNorm, swish and a 3×3 conv: ``(B, in_channels, h, w) -> (B, out_channels, h·2^(L−1), ...)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ch: int,
        num_res_blocks: int,
        resolution: int,
        ch_mult: Sequence[int] = (2, 2),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        block_in = in_channels
        self.res_blocks = nn.ModuleList()
        self.upsample_blocks = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            blocks = []
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                blocks.append(_plain_block(block_in, block_out, dropout))
                block_in = block_out
            self.res_blocks.append(nn.ModuleList(blocks))
            if i_level != self.num_resolutions - 1:
                self.upsample_blocks.append(Upsample(block_in, True))
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i_level, blocks in enumerate(self.res_blocks):
            for block in blocks:
                h = block(h, None)
            if i_level != self.num_resolutions - 1:
                h = self.upsample_blocks[i_level](h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class LatentRescaler(nn.Module):
    """3×3 conv to ``mid_channels``, ``depth`` ResnetBlocks, nearest resize by ``factor`` (sizes rounded),
    self-attention, ``depth`` ResnetBlocks, 1×1 conv to ``out_channels``."""

    def __init__(self, factor: float, in_channels: int, mid_channels: int, out_channels: int, depth: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.conv_in = nn.Conv2d(in_channels, mid_channels, kernel_size=3, stride=1, padding=1)
        self.res_block1 = nn.ModuleList([_plain_block(mid_channels, mid_channels) for _ in range(depth)])
        self.attn = AttnBlock(mid_channels)
        self.res_block2 = nn.ModuleList([_plain_block(mid_channels, mid_channels) for _ in range(depth)])
        self.conv_out = nn.Conv2d(mid_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.res_block1:
            x = block(x, None)
        size = (int(round(x.shape[2] * self.factor)), int(round(x.shape[3] * self.factor)))
        x = self.attn(F.interpolate(x, size=size))
        for block in self.res_block2:
            x = block(x, None)
        return self.conv_out(x)


class MergedRescaleEncoder(nn.Module):
    """An Encoder to ``ch·ch_mult[-1]`` channels (single, not doubled ``z``) followed by a LatentRescaler to
    ``out_ch`` channels."""

    def __init__(
        self,
        in_channels: int,
        ch: int,
        resolution: int,
        out_ch: int,
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        rescale_factor: float = 1.0,
        rescale_module_depth: int = 1,
    ) -> None:
        super().__init__()
        intermediate_chn = ch * ch_mult[-1]
        self.encoder = Encoder(in_channels=in_channels, num_res_blocks=num_res_blocks, ch=ch, ch_mult=ch_mult,
                               z_channels=intermediate_chn, double_z=False, resolution=resolution,
                               attn_resolutions=attn_resolutions, dropout=dropout, resamp_with_conv=resamp_with_conv,
                               out_ch=None)
        self.rescaler = LatentRescaler(factor=rescale_factor, in_channels=intermediate_chn,
                                       mid_channels=intermediate_chn, out_channels=out_ch, depth=rescale_module_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rescaler(self.encoder(x))


class MergedRescaleDecoder(nn.Module):
    """A LatentRescaler from ``z_channels`` to ``z_channels·ch_mult[-1]`` channels followed by a Decoder."""

    def __init__(
        self,
        z_channels: int,
        out_ch: int,
        resolution: int,
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        rescale_factor: float = 1.0,
        rescale_module_depth: int = 1,
    ) -> None:
        super().__init__()
        tmp_chn = z_channels * ch_mult[-1]
        self.decoder = Decoder(out_ch=out_ch, z_channels=tmp_chn, attn_resolutions=attn_resolutions, dropout=dropout,
                               resamp_with_conv=resamp_with_conv, in_channels=None, num_res_blocks=num_res_blocks,
                               ch_mult=ch_mult, resolution=resolution, ch=ch)
        self.rescaler = LatentRescaler(factor=rescale_factor, in_channels=z_channels, mid_channels=tmp_chn,
                                       out_channels=tmp_chn, depth=rescale_module_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.rescaler(x))


class Upsampler(nn.Module):
    """LatentRescaler by ``1 + out_size % in_size``, then a Decoder with ``log2(out_size // in_size) + 1`` levels
    of ``ch_mult`` each: ``(B, in_channels, in_size, in_size) -> (B, out_channels, ...)``."""

    def __init__(self, in_size: int, out_size: int, in_channels: int, out_channels: int, ch_mult: int = 2) -> None:
        super().__init__()
        if out_size < in_size:
            raise ValueError(f"Upsampler: out_size {out_size} must be at least in_size {in_size}.")
        num_blocks = int(math.log2(out_size // in_size)) + 1
        factor_up = 1.0 + (out_size % in_size)
        logger.info("Building %s with in_size: %s --> out_size %s and factor %s",
                    type(self).__name__, in_size, out_size, factor_up)
        self.rescaler = LatentRescaler(factor=factor_up, in_channels=in_channels, mid_channels=2 * in_channels,
                                       out_channels=in_channels)
        self.decoder = Decoder(out_ch=out_channels, resolution=out_size, z_channels=in_channels, num_res_blocks=2,
                               attn_resolutions=[], in_channels=None, ch=in_channels,
                               ch_mult=[ch_mult for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.rescaler(x))


class Resize(nn.Module):
    """Fixed interpolation by ``scale_factor`` (``mode``, ``align_corners=False``); identity for 1.0."""

    def __init__(self, in_channels: int | None = None, learned: bool = False, mode: str = "bilinear") -> None:
        super().__init__()
        if learned:
            raise NotImplementedError("Resize(learned=True) is not implemented (nor in the original); use False.")
        self.with_conv = learned
        self.mode = mode

    def forward(self, x: torch.Tensor, scale_factor: float = 1.0) -> torch.Tensor:
        if scale_factor == 1.0:
            return x
        return F.interpolate(x, mode=self.mode, align_corners=False, scale_factor=scale_factor)


class FirstStagePostProcessor(nn.Module):
    """Features from a frozen first stage: ``z = encode(x)`` (the mode for a Gaussian posterior), GroupNorm,
    3×3 conv to ``n_channels`` (default: the first stage's ``encoder.ch``), swish, then per ``ch_mult`` entry a
    ResnetBlock and a 2×2 average pooling; ``reshape`` flattens to ``(B, h·w, C)``."""

    def __init__(
        self,
        ch_mult: Sequence[int],
        in_channels: int,
        pretrained_model: nn.Module | None = None,
        reshape: bool = False,
        n_channels: int | None = None,
        dropout: float = 0.0,
        pretrained_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if pretrained_config is None:
            if pretrained_model is None:
                raise ValueError("FirstStagePostProcessor needs pretrained_model or pretrained_config.")
            self.pretrained_model = pretrained_model
        else:
            self.instantiate_pretrained(pretrained_config)
        self.do_reshape = reshape
        if n_channels is None:
            n_channels = self.pretrained_model.encoder.ch
        self.proj_norm = Normalize(in_channels, num_groups=in_channels // 2)
        self.proj = nn.Conv2d(in_channels, n_channels, kernel_size=3, stride=1, padding=1)
        blocks, downs = [], []
        ch_in = n_channels
        for m in ch_mult:
            blocks.append(ResnetBlock(in_channels=ch_in, out_channels=m * n_channels, dropout=dropout))
            ch_in = m * n_channels
            downs.append(Downsample(ch_in, with_conv=False))
        self.model = nn.ModuleList(blocks)
        self.downsampler = nn.ModuleList(downs)

    def instantiate_pretrained(self, config: Mapping[str, Any]) -> None:
        """Build the first stage from ``config``, frozen and in eval mode."""
        self.pretrained_model = instantiate_from_config(config, name="pretrained_config").eval()
        for param in self.pretrained_model.parameters():
            param.requires_grad = False

    @torch.no_grad()
    def encode_with_pretrained(self, x: torch.Tensor) -> torch.Tensor:
        c = self.pretrained_model.encode(x)
        return c.mode() if isinstance(c, DiagonalGaussianDistribution) else c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = nonlinearity(self.proj(self.proj_norm(self.encode_with_pretrained(x))))
        for submodel, downmodel in zip(self.model, self.downsampler):
            z = downmodel(submodel(z, temb=None))
        return rearrange(z, "b c h w -> b (h w) c") if self.do_reshape else z
