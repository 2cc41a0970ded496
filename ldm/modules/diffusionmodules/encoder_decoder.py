"""The first stage's convolutional autoencoder networks: ``Encoder`` and ``Decoder``.

Both are built from one ``ddconfig`` (the ``ddconfig`` block of the autoencoder configs) as a stack of
resolution levels (``Level``). With ``n = len(ch_mult)`` levels and ``f = 2**(n - 1)``, the encoder maps an image
``(B, in_channels, H, W)`` to ``(B, z, H/f, W/f)``, ``z = 2·z_channels`` when ``double_z`` (mean and
log-variance), and the decoder maps ``(B, z_channels, h, w)`` back to ``(B, out_ch, h·f, w·f)``. Level ``i`` works
at ``ch·ch_mult[i]`` channels and 1/2^i of the input resolution, in both halves; the decoder runs its levels from
``n - 1`` down to 0 but stores them by level index (``up.0`` is the full-resolution level).

The layers (``ResnetBlock``, ``AttnBlock``, ...) are in ``autoencoder_blocks``; both modules are re-exported by
``ldm.modules.diffusionmodules.model``, the path configs and checkpoints name.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ldm.modules.diffusionmodules.autoencoder_blocks import (
    Downsample,
    Normalize,
    ResnetBlock,
    Upsample,
    make_attn,
    nonlinearity,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Level:
    """One resolution level: ``depth`` ResnetBlocks from ``width_in`` to ``width`` channels at side ``size`` (for
    a ``resolution``-sized input), each followed by self-attention when ``attend``; then a ×2 resampler when
    ``resample``."""

    width_in: int
    width: int
    size: int
    depth: int
    attend: bool
    resample: bool


def encoder_levels(
    ch: int, ch_mult: Sequence[int], num_res_blocks: int, resolution: int, attn_resolutions: Sequence[int]
) -> list[Level]:
    """The encoder's levels, highest resolution first; each but the last halves the resolution."""
    widths = [ch * m for m in ch_mult]
    last = len(widths) - 1
    return [
        Level(width_in, width, size, num_res_blocks, size in attn_resolutions, index < last)
        for index, (width_in, width, size) in enumerate(
            zip([ch, *widths[:-1]], widths, (resolution // 2**i for i in range(len(widths))))
        )
    ]


def decoder_levels(
    ch: int, ch_mult: Sequence[int], num_res_blocks: int, resolution: int, attn_resolutions: Sequence[int]
) -> list[Level]:
    """The decoder's levels in the order the data runs, lowest resolution (level ``n - 1``) first; each but the
    last doubles the resolution. Sizes count up from the latent side ``resolution // 2**(n - 1)``."""
    widths = [ch * m for m in ch_mult]
    top = len(widths) - 1
    size = resolution // 2**top
    levels, width_in = [], widths[top]
    for index in range(top, -1, -1):
        levels.append(Level(width_in, widths[index], size, num_res_blocks + 1, size in attn_resolutions, index > 0))
        width_in, size = widths[index], size * 2
    return levels


def _plain_block(width_in: int, width: int, dropout: float) -> ResnetBlock:
    return ResnetBlock(in_channels=width_in, out_channels=width, temb_channels=0, dropout=dropout)


def build_level(spec: Level, resampler: tuple[str, type[nn.Module]], dropout: float, attn_type: str,
                resamp_with_conv: bool) -> nn.Module:
    """A level as the state-dict keys lay it out: ``block.{j}``, ``attn.{j}`` (when attending) and the
    resampler under ``resampler[0]`` (``downsample`` or ``upsample``) when ``spec.resample``."""
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(), nn.ModuleList()
    for width_in in [spec.width_in] + [spec.width] * (spec.depth - 1):
        level.block.append(_plain_block(width_in, spec.width, dropout))
        if spec.attend:
            level.attn.append(make_attn(spec.width, attn_type))
    if spec.resample:
        name, kind = resampler
        level.add_module(name, kind(spec.width, resamp_with_conv))
    return level


def build_middle(width: int, dropout: float, attn_type: str) -> nn.Module:
    """The block between the two halves: ``block_1``, ``attn_1``, ``block_2`` at ``width`` channels."""
    mid = nn.Module()
    mid.block_1 = _plain_block(width, width, dropout)
    mid.attn_1 = make_attn(width, attn_type)
    mid.block_2 = _plain_block(width, width, dropout)
    return mid


def level_layers(level: nn.Module) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """The level's ResnetBlocks in order, each followed by its attention layer where the level has them, as
    one-argument layers.

    The forwards apply them one by one (``for layer in ...: h = layer(h)``) rather than through a helper that
    takes ``h``: a caller holding the level's input while the helper runs would keep that tensor (the largest of
    the level at the decoder's top) alive to the level's end.
    """
    for index, block in enumerate(level.block):
        yield functools.partial(block, temb=None)
        if len(level.attn):
            yield level.attn[index]


def middle_layers(mid: nn.Module) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """``block_1``, ``attn_1``, ``block_2`` as one-argument layers (shape-preserving)."""
    yield functools.partial(mid.block_1, temb=None)
    yield mid.attn_1
    yield functools.partial(mid.block_2, temb=None)


def _attn_type(attn_type: str, use_linear_attn: bool) -> str:
    return "linear" if use_linear_attn else attn_type


class Encoder(nn.Module):
    """``(B, in_channels, H, W) -> (B, 2·z_channels if double_z else z_channels, H/f, W/f)``, ``f = 2^(n−1)``.

    ``conv_in``; per level ``num_res_blocks`` ResnetBlocks (self-attention after each at the side lengths in
    ``attn_resolutions``) and a stride-2 Downsample except at the last level; the middle block; then
    GroupNorm, swish and ``conv_out``. Decoder-only ddconfig keys (``out_ch``, ``give_pre_end``, ``tanh_out``) are
    accepted and ignored, so that one ddconfig builds both halves.
    """

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int | None = None,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = True,
        use_linear_attn: bool = False,
        attn_type: str = "vanilla",
        **ignore_kwargs,
    ) -> None:
        super().__init__()
        attn_type = _attn_type(attn_type, use_linear_attn)
        levels = encoder_levels(ch, ch_mult, num_res_blocks, resolution, attn_resolutions)
        self.ch, self.temb_ch = ch, 0
        self.num_resolutions, self.num_res_blocks = len(levels), num_res_blocks
        self.resolution, self.in_channels = resolution, in_channels
        self.in_ch_mult = (1, *ch_mult)
        self.downsampling_factor = 2 ** (len(levels) - 1)
        deepest = levels[-1].width

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList(
            build_level(spec, ("downsample", Downsample), dropout, attn_type, resamp_with_conv) for spec in levels
        )
        self.mid = build_middle(deepest, dropout, attn_type)
        self.norm_out = Normalize(deepest)
        self.conv_out = nn.Conv2d(deepest, z_channels * (2 if double_z else 1), kernel_size=3, padding=1)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError unless ``x`` is ``(B, in_channels, H, W)`` with H and W divisible by the factor."""
        factor = self.downsampling_factor
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"the encoder expects images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}; "
                f"pass channels-first images with {self.in_channels} channels (ddconfig.in_channels)."
            )
        height, width = x.shape[2:]
        if height % factor or width % factor:
            raise ValueError(
                f"image of shape {tuple(x.shape)}: height {height} and width {width} must be divisible by the "
                f"encoder's downsampling factor {factor} (= 2**(len(ch_mult) - 1)); resize or crop the image "
                f"to a multiple of {factor}, e.g. {height - height % factor or factor}x"
                f"{width - width % factor or factor}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            for layer in level_layers(level):
                h = layer(h)  # (B, ch·ch_mult[i], H/2^i, W/2^i)
            if hasattr(level, "downsample"):
                h = level.downsample(h)  # (B, ch·ch_mult[i], H/2^(i+1), W/2^(i+1))
        for layer in middle_layers(self.mid):
            h = layer(h)  # (B, ch·ch_mult[-1], H/f, W/f)
        h = self.norm_out(h)  # (B, ch·ch_mult[-1], H/f, W/f); rebinding h frees the block output early
        h = nonlinearity(h)  # (B, ch·ch_mult[-1], H/f, W/f)
        return self.conv_out(h)  # (B, z, H/f, W/f)


class Decoder(nn.Module):
    """``(B, z_channels, h, w) -> (B, out_ch, h·f, w·f)``, the Encoder mirrored.

    ``conv_in``, the middle block, then per level from the lowest resolution up ``num_res_blocks + 1``
    ResnetBlocks (self-attention after each at ``attn_resolutions``) and a ×2 Upsample except at level 0;
    then GroupNorm, swish and ``conv_out``. ``give_pre_end`` returns the features before that output head,
    ``tanh_out`` squashes the output into (−1, 1).
    """

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        in_channels: int | None,
        resolution: int,
        z_channels: int,
        give_pre_end: bool = False,
        tanh_out: bool = False,
        use_linear_attn: bool = False,
        attn_type: str = "vanilla",
        **ignorekwargs,
    ) -> None:
        super().__init__()
        attn_type = _attn_type(attn_type, use_linear_attn)
        flow = decoder_levels(ch, ch_mult, num_res_blocks, resolution, attn_resolutions)
        self.ch, self.temb_ch = ch, 0
        self.num_resolutions, self.num_res_blocks = len(flow), num_res_blocks
        self.resolution, self.in_channels = resolution, in_channels
        self.give_pre_end, self.tanh_out = give_pre_end, tanh_out
        latent_side, deepest = flow[0].size, flow[0].width_in
        self.z_shape = (1, z_channels, latent_side, latent_side)
        logger.info("Decoder latent z of shape %s (%d values).", self.z_shape, z_channels * latent_side**2)

        self.conv_in = nn.Conv2d(z_channels, deepest, kernel_size=3, padding=1)
        self.mid = build_middle(deepest, dropout, attn_type)
        # built in the order the data runs (lowest resolution first), stored by level index
        built = [build_level(spec, ("upsample", Upsample), dropout, attn_type, resamp_with_conv) for spec in flow]
        self.up = nn.ModuleList(reversed(built))
        self.norm_out = Normalize(flow[-1].width)
        self.conv_out = nn.Conv2d(flow[-1].width, out_ch, kernel_size=3, padding=1)

    def levels_in_flow_order(self) -> Iterator[nn.Module]:
        """``up.{n-1}``, ..., ``up.0``: the levels from the latent resolution up to the image's."""
        return reversed(self.up)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.last_z_shape = z.shape
        h = self.conv_in(z)  # (B, ch·ch_mult[-1], h, w)
        for layer in middle_layers(self.mid):
            h = layer(h)  # (B, ch·ch_mult[-1], h, w)
        for level in self.levels_in_flow_order():
            for layer in level_layers(level):
                h = layer(h)  # (B, ch·ch_mult[i], h·f/2^i, w·f/2^i)
            if hasattr(level, "upsample"):
                h = level.upsample(h)  # (B, ch·ch_mult[i], h·f/2^(i−1), w·f/2^(i−1))
        if self.give_pre_end:
            return h  # (B, ch·ch_mult[0], h·f, w·f)
        h = self.norm_out(h)  # (B, ch·ch_mult[0], h·f, w·f); rebinding h frees the block output early
        h = nonlinearity(h)  # (B, ch·ch_mult[0], h·f, w·f)
        h = self.conv_out(h)  # (B, out_ch, h·f, w·f)
        return torch.tanh(h) if self.tanh_out else h


__all__ = [
    "Decoder",
    "Encoder",
    "Level",
    "build_level",
    "build_middle",
    "decoder_levels",
    "encoder_levels",
    "level_layers",
    "middle_layers",
]
