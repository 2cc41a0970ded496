"""The UNet's plan: which block sits where, computed as a table first and then built.

- :func:`level_plan`: one :class:`Level` per resolution (width, whether it attends);
- :func:`encoder_stages` / :func:`decoder_stages`: one :class:`Stage` per input / output block (channels in and out,
  ResBlock or not, attention or not, resampling);
- :class:`UNetParts`: the block factory that turns a stage into modules;
- :func:`build_torso`: the stem, the input levels and the middle block, shared by ``UNetModel`` and
  ``EncoderUNetModel``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch.nn as nn

from ldm.modules.diffusionmodules.unet_blocks import Downsample, ResBlock, TimestepEmbedSequential, Upsample
from ldm.modules.diffusionmodules.util import conv_nd, linear

# --------------------------------------------------------------------------------------------------------
# Level plan and the encoder half
# --------------------------------------------------------------------------------------------------------


class Level(NamedTuple):
    """One resolution level: ``index`` 0 is the input resolution, each further level is ×2 coarser."""

    index: int
    width: int  # model_channels × channel_mult[index]
    attention: bool  # 2**index is listed in attention_resolutions
    last: bool  # the coarsest level: no resampling below it


class Stage(NamedTuple):
    """One ``TimestepEmbedSequential``: [ResBlock c_in → c_out] [attention] [×2 resampler]."""

    c_in: int
    c_out: int
    res: bool
    attention: bool
    resample: Literal["up", "down"] | None


def level_plan(model_channels: int, channel_mult: Sequence[int], attention_resolutions: Iterable[int]) -> list[Level]:
    """The levels of a UNet as a table."""
    factors = set(attention_resolutions)
    deepest = len(channel_mult) - 1
    return [Level(i, model_channels * m, 2**i in factors, i == deepest) for i, m in enumerate(channel_mult)]


def encoder_stages(model_channels: int, levels: Sequence[Level], num_res_blocks: int) -> list[Stage]:
    """The input blocks after the stem: ``num_res_blocks`` stages per level, then a downsampler between levels."""
    stages, width = [], model_channels
    for level in levels:
        for _ in range(num_res_blocks):
            stages.append(Stage(width, level.width, True, level.attention, None))
            width = level.width
        if not level.last:
            stages.append(Stage(width, width, False, False, "down"))
    return stages


def decoder_stages(model_channels: int, levels: Sequence[Level], num_res_blocks: int) -> list[Stage]:
    """The output blocks: ``num_res_blocks + 1`` stages per level, coarsest first, each concatenating the skip
    of one input block (the last one in, the first one out); every level but the finest ends with ×2 up."""
    skips = [model_channels] + [s.c_out for s in encoder_stages(model_channels, levels, num_res_blocks)]
    width = skips[-1]
    stages = []
    for level in reversed(levels):
        for i in range(num_res_blocks + 1):
            up = level.index > 0 and i == num_res_blocks
            stages.append(Stage(width + skips.pop(), level.width, True, level.attention, "up" if up else None))
            width = level.width
    return stages


def time_embedding_mlp(model_channels: int) -> nn.Sequential:
    """Linear → SiLU → Linear, from the sinusoidal ``(B, model_channels)`` to ``(B, 4·model_channels)``."""
    width = 4 * model_channels
    return nn.Sequential(linear(model_channels, width), nn.SiLU(), linear(width, width))


@dataclass(frozen=True)
class UNetParts:
    """Makes the UNet's blocks from its settings; ``attention(width, decoder)`` makes an attention layer."""

    emb_channels: int
    dropout: float
    dims: int
    use_checkpoint: bool
    use_scale_shift_norm: bool
    resblock_updown: bool
    conv_resample: bool
    attention: Callable[[int, bool], nn.Module]

    def res(self, c_in: int, c_out: int | None = None, up: bool = False, down: bool = False) -> ResBlock:
        return ResBlock(
            c_in,
            self.emb_channels,
            self.dropout,
            out_channels=c_out,
            dims=self.dims,
            use_checkpoint=self.use_checkpoint,
            use_scale_shift_norm=self.use_scale_shift_norm,
            up=up,
            down=down,
        )

    def resampler(self, width: int, direction: Literal["up", "down"]) -> nn.Module:
        """A ResBlock that resamples (``resblock_updown``), else an ``Upsample`` / ``Downsample``."""
        if self.resblock_updown:
            return self.res(width, width, up=direction == "up", down=direction == "down")
        kind = Upsample if direction == "up" else Downsample
        return kind(width, self.conv_resample, self.dims, width)

    def stage(self, spec: Stage, decoder: bool) -> TimestepEmbedSequential:
        layers = [self.res(spec.c_in, spec.c_out)] if spec.res else []
        if spec.attention:
            layers.append(self.attention(spec.c_out, decoder))
        if spec.resample is not None:
            layers.append(self.resampler(spec.c_out, spec.resample))
        return TimestepEmbedSequential(*layers)

    def middle(self, width: int) -> TimestepEmbedSequential:
        return TimestepEmbedSequential(self.res(width), self.attention(width, False), self.res(width))


class Torso(NamedTuple):
    input_blocks: nn.ModuleList
    middle_block: TimestepEmbedSequential
    widths: list[int]  # output width of each input block, then of the middle block


def build_torso(
    parts: UNetParts, in_channels: int, model_channels: int, levels: Sequence[Level], num_res_blocks: int
) -> Torso:
    """The stem conv, the input levels and the middle block."""
    stem = TimestepEmbedSequential(conv_nd(parts.dims, in_channels, model_channels, 3, padding=1))
    stages = encoder_stages(model_channels, levels, num_res_blocks)
    blocks = nn.ModuleList([stem, *(parts.stage(spec, decoder=False) for spec in stages)])
    width = stages[-1].c_out if stages else model_channels
    widths = [model_channels, *(spec.c_out for spec in stages), width]
    return Torso(blocks, parts.middle(width), widths)
