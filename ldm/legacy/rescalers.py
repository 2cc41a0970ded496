"""Latent rescalers and small decoders assembled from the first-stage autoencoder's blocks.

``LatentRescaler`` resizes a latent by a factor between two stacks of ResnetBlocks; ``MergedRescaleEncoder`` /
``MergedRescaleDecoder`` put one behind an Encoder / in front of a Decoder; ``Upsampler`` maps a latent of
``in_size`` to an image of ``out_size``; ``FirstStagePostProcessor`` turns a frozen first stage's latent into
features; ``SimpleDecoder``, ``UpsampleDecoder`` and ``Resize`` are small decoders / resamplers. Configs reach them
as ``ldm.modules.diffusionmodules.model.<Name>``.

All ResnetBlocks here run without a timestep embedding (``temb=None``).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.diffusionmodules.autoencoder_blocks import (
    AttnBlock,
    Downsample,
    Normalize,
    ResnetBlock,
    Upsample,
    nonlinearity,
)
from ldm.modules.diffusionmodules.encoder_decoder import Decoder, Encoder
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)

# ResnetBlock's default embedding width: FirstStagePostProcessor's blocks carry this (unused) ``temb_proj``.
_DEFAULT_TEMB_CHANNELS = 512


def _resnet_chain(widths: Sequence[int], *, dropout: float = 0.0, temb_channels: int = 0) -> list[ResnetBlock]:
    """ResnetBlocks ``widths[0] -> widths[1] -> ... -> widths[-1]``: ``len(widths) - 1`` of them."""
    return [
        ResnetBlock(in_channels=c_in, out_channels=c_out, dropout=dropout, temb_channels=temb_channels)
        for c_in, c_out in itertools.pairwise(widths)
    ]


def _run(layers: Iterable[nn.Module], h: torch.Tensor) -> torch.Tensor:
    """Apply ``layers`` in turn; ResnetBlocks get ``temb=None``."""
    for layer in layers:
        h = layer(h, None) if isinstance(layer, ResnetBlock) else layer(h)
    return h


def _attach_head(module: nn.Module, channels: int, out_channels: int) -> None:
    """Give ``module`` the output head ``norm_out`` (GroupNorm) and ``conv_out`` (3×3 conv to ``out_channels``)."""
    module.norm_out = Normalize(channels)
    module.conv_out = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)


def _head(module: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``conv_out(swish(norm_out(h)))``."""
    return module.conv_out(nonlinearity(module.norm_out(h)))


class SimpleDecoder(nn.Module):
    """``(B, C, H, W) -> (B, out_channels, 2H, 2W)``: 1×1 conv, ResnetBlocks C -> 2C -> 4C -> 2C, 1×1 conv back
    to C, a ×2 Upsample, then GroupNorm, swish and a 3×3 conv."""

    def __init__(self, in_channels: int, out_channels: int, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        c = in_channels
        body = [nn.Conv2d(c, c, 1), *_resnet_chain((c, 2 * c, 4 * c, 2 * c)), nn.Conv2d(2 * c, c, 1)]
        self.model = nn.ModuleList([*body, Upsample(c, with_conv=True)])
        _attach_head(self, c, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _head(self, _run(self.model, x))  # (B, C, 2H, 2W) -> (B, out_channels, 2H, 2W)


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
        widths = [ch * m for m in ch_mult]
        entering = [in_channels, *widths[:-1]]
        self.res_blocks = nn.ModuleList(
            nn.ModuleList(_resnet_chain([c_in] + [c_out] * (num_res_blocks + 1), dropout=dropout))
            for c_in, c_out in zip(entering, widths)
        )
        self.upsample_blocks = nn.ModuleList(Upsample(width, True) for width in widths[:-1])
        _attach_head(self, widths[-1], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for level, blocks in enumerate(self.res_blocks):
            h = _run(blocks, h)  # (B, ch·ch_mult[level], h_l, w_l)
            if level < len(self.upsample_blocks):
                h = self.upsample_blocks[level](h)  # (B, ·, 2h_l, 2w_l)
        return _head(self, h)


class LatentRescaler(nn.Module):
    """3×3 conv to ``mid_channels``, ``depth`` ResnetBlocks, nearest resize by ``factor`` (sizes rounded),
    self-attention, ``depth`` ResnetBlocks, 1×1 conv to ``out_channels``."""

    def __init__(self, factor: float, in_channels: int, mid_channels: int, out_channels: int, depth: int = 2) -> None:
        super().__init__()
        self.factor = factor
        same_width = [mid_channels] * (depth + 1)
        self.conv_in = nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1)
        self.res_block1 = nn.ModuleList(_resnet_chain(same_width))
        self.attn = AttnBlock(mid_channels)
        self.res_block2 = nn.ModuleList(_resnet_chain(same_width))
        self.conv_out = nn.Conv2d(mid_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _run(self.res_block1, self.conv_in(x))  # (B, mid, h, w)
        resized = [int(round(n * self.factor)) for n in h.shape[-2:]]
        h = self.attn(F.interpolate(h, size=resized))  # (B, mid, round(h·factor), round(w·factor))
        return self.conv_out(_run(self.res_block2, h))  # (B, out_channels, ...)


class MergedRescaleEncoder(nn.Module):
    """An Encoder to ``ch·ch_mult[-1]`` channels (a single ``z``, no log-variance half) followed by a
    LatentRescaler to ``out_ch`` channels."""

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
        latent = ch * ch_mult[-1]
        trunk = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
                     resolution=resolution, dropout=dropout, resamp_with_conv=resamp_with_conv)
        self.encoder = Encoder(**trunk, in_channels=in_channels, z_channels=latent, double_z=False, out_ch=None)
        self.rescaler = LatentRescaler(rescale_factor, latent, latent, out_ch, depth=rescale_module_depth)

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
        latent = z_channels * ch_mult[-1]
        trunk = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
                     resolution=resolution, dropout=dropout, resamp_with_conv=resamp_with_conv)
        self.decoder = Decoder(**trunk, in_channels=None, z_channels=latent, out_ch=out_ch)
        self.rescaler = LatentRescaler(rescale_factor, z_channels, latent, latent, depth=rescale_module_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.rescaler(x))


class Upsampler(nn.Module):
    """LatentRescaler by ``1 + out_size % in_size``, then a Decoder with ``log2(out_size // in_size) + 1`` levels
    of ``ch_mult`` each: ``(B, in_channels, in_size, in_size) -> (B, out_channels, ...)``."""

    def __init__(self, in_size: int, out_size: int, in_channels: int, out_channels: int, ch_mult: int = 2) -> None:
        super().__init__()
        if out_size < in_size:
            raise ValueError(f"Upsampler: out_size {out_size} must be at least in_size {in_size}.")
        levels = 1 + int(math.log2(out_size // in_size))
        factor = 1.0 + out_size % in_size
        logger.info("%s: latent %d px -> image %d px, rescale factor %s", type(self).__name__, in_size, out_size,
                    factor)
        self.rescaler = LatentRescaler(factor, in_channels, 2 * in_channels, in_channels)
        self.decoder = Decoder(ch=in_channels, ch_mult=[ch_mult] * levels, num_res_blocks=2, attn_resolutions=[],
                               resolution=out_size, in_channels=None, z_channels=in_channels, out_ch=out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.rescaler(x))


class Resize(nn.Module):
    """Fixed interpolation by ``scale_factor`` (``mode``, ``align_corners=False``); identity for 1.0."""

    def __init__(self, in_channels: int | None = None, learned: bool = False, mode: str = "bilinear") -> None:
        super().__init__()
        if learned:
            raise NotImplementedError("Resize(learned=True) has no implementation; use learned=False.")
        self.with_conv = learned
        self.mode = mode

    def forward(self, x: torch.Tensor, scale_factor: float = 1.0) -> torch.Tensor:
        if scale_factor == 1.0:
            return x
        return F.interpolate(x, mode=self.mode, align_corners=False, scale_factor=scale_factor)


class FirstStagePostProcessor(nn.Module):
    """Features from a frozen first stage: ``z = encode(x)`` (the mode for a Gaussian posterior), GroupNorm,
    3×3 conv to ``n_channels`` (default: the first stage's ``encoder.ch``), swish, then per ``ch_mult`` entry a
    ResnetBlock and a 2×2 average pooling; ``reshape`` flattens to ``(B, h·w, C)``.

    ``pretrained_config`` takes precedence over ``pretrained_model``; one of them is required.
    """

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
        if pretrained_config is not None:
            self.instantiate_pretrained(pretrained_config)
        elif pretrained_model is not None:
            self.pretrained_model = pretrained_model
        else:
            raise ValueError("FirstStagePostProcessor needs pretrained_model or pretrained_config.")
        self.do_reshape = reshape
        width = self.pretrained_model.encoder.ch if n_channels is None else n_channels
        widths = [width * m for m in ch_mult]
        self.proj_norm = Normalize(in_channels, num_groups=in_channels // 2)
        self.proj = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        self.model = nn.ModuleList(
            _resnet_chain([width, *widths], dropout=dropout, temb_channels=_DEFAULT_TEMB_CHANNELS)
        )
        self.downsampler = nn.ModuleList(Downsample(w, with_conv=False) for w in widths)

    def instantiate_pretrained(self, config: Mapping[str, Any]) -> None:
        """Build the first stage from ``config``, frozen and in eval mode."""
        self.pretrained_model = instantiate_from_config(config, name="pretrained_config").eval()
        self.pretrained_model.requires_grad_(False)

    @torch.no_grad()
    def encode_with_pretrained(self, x: torch.Tensor) -> torch.Tensor:
        """The first stage's latent of ``x``; the posterior's mode when it returns a Gaussian."""
        latent = self.pretrained_model.encode(x)
        return latent.mode() if isinstance(latent, DiagonalGaussianDistribution) else latent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encode_with_pretrained(x)  # (B, in_channels, h, w)
        z = nonlinearity(self.proj(self.proj_norm(z)))  # (B, n_channels, h, w)
        for block, pool in zip(self.model, self.downsampler):
            z = pool(block(z, None))  # (B, n_channels·m, h/2^k, w/2^k)
        return rearrange(z, "b c h w -> b (h w) c") if self.do_reshape else z
