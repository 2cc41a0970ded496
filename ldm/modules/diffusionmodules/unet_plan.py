"""The UNet's plan: which block sits where, computed as a table first and then built.

- :func:`level_plan`: one :class:`Level` per resolution (width, whether it attends);
- :func:`encoder_stages` / :func:`decoder_stages`: one :class:`Stage` per input / output block (channels in and out,
  ResBlock or not, attention or not, resampling);
- :class:`UNetParts`: the block factory that turns a stage into modules; its ``attention(width, decoder)`` factory
  is also handed ``disable_self_attn=True`` for the stages of levels planned without self-attention;
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
from ldm.util import SettingError

# --------------------------------------------------------------------------------------------------------
# Level plan and the encoder half
# --------------------------------------------------------------------------------------------------------


class Level(NamedTuple):
    """One resolution level: ``index`` 0 is the input resolution, each further level is ×2 coarser."""

    index: int
    width: int  # model_channels × channel_mult[index]
    attention: bool  # 2**index is listed in attention_resolutions
    last: bool  # the coarsest level: no resampling below it
    res_blocks: int = 2  # ResBlocks per input level (one more per output level)
    attention_blocks: int | None = None  # only the first this many stages of the level attend (None: all)
    disable_self_attn: bool = False  # the level's transformer blocks cross-attend in their first attention too

    def attends(self, position: int) -> bool:
        """Whether the ``position``-th stage of this level (0-based, within the encoder or the decoder) attends."""
        return self.attention and (self.attention_blocks is None or position < self.attention_blocks)


class Stage(NamedTuple):
    """One ``TimestepEmbedSequential``: [ResBlock c_in → c_out] [attention] [×2 resampler]."""

    c_in: int
    c_out: int
    res: bool
    attention: bool
    resample: Literal["up", "down"] | None
    disable_self_attn: bool = False


def _per_level(value: int | Sequence[int] | Sequence[bool] | None, levels: int, name: str) -> list | None:
    """A per-level setting as a list of ``levels`` entries (an int is every level's value; None stays None)."""
    if value is None or isinstance(value, int):
        return value if value is None else [value] * levels
    items = list(value)
    if len(items) != levels:
        raise SettingError(
            f"UNetModel: {name} has {len(items)} entries but channel_mult has {levels} levels; give one entry per "
            "level."
        )
    return items


def level_plan(
    model_channels: int,
    channel_mult: Sequence[int],
    attention_resolutions: Iterable[int],
    num_res_blocks: int | Sequence[int] = 2,
    num_attention_blocks: Sequence[int] | None = None,
    disable_self_attentions: Sequence[bool] | None = None,
) -> list[Level]:
    """The levels of a UNet as a table.

    ``num_res_blocks``: one count for every level or one per level. ``num_attention_blocks`` (per level): only the
    first ``n`` stages of a level attend, even where ``attention_resolutions`` asks for attention (it never adds
    attention). ``disable_self_attentions`` (per level): the level's transformer blocks have no self-attention.
    """
    factors, deepest, count = set(attention_resolutions), len(channel_mult) - 1, len(channel_mult)
    res_blocks = _per_level(num_res_blocks, count, "num_res_blocks")
    attention_blocks = _per_level(num_attention_blocks, count, "num_attention_blocks") or [None] * count
    no_self = _per_level(disable_self_attentions, count, "disable_self_attentions") or [False] * count
    for i, (blocks, attending) in enumerate(zip(res_blocks, attention_blocks, strict=True)):
        if attending is not None and attending > blocks:
            raise SettingError(
                f"UNetModel: num_attention_blocks[{i}] = {attending} exceeds num_res_blocks of that level "
                f"({blocks}); at most one attention layer per ResBlock."
            )
    return [
        Level(i, model_channels * m, 2**i in factors, i == deepest, blocks, attending, bool(off))
        for i, (m, blocks, attending, off) in enumerate(zip(channel_mult, res_blocks, attention_blocks, no_self))
    ]


def _stage_counts(levels: Sequence[Level], num_res_blocks: int | None) -> list[int]:
    """ResBlocks per input level: the levels' own counts, or ``num_res_blocks`` for every level when given."""
    return [level.res_blocks if num_res_blocks is None else num_res_blocks for level in levels]


def encoder_stages(model_channels: int, levels: Sequence[Level], num_res_blocks: int | None = None) -> list[Stage]:
    """The input blocks after the stem: the level's ResBlock stages, then a downsampler between levels.

    ``num_res_blocks`` overrides the levels' ``res_blocks`` (kept for callers that plan with one count)."""
    stages, width = [], model_channels
    for level, count in zip(levels, _stage_counts(levels, num_res_blocks), strict=True):
        for position in range(count):
            stages.append(Stage(width, level.width, True, level.attends(position), None, level.disable_self_attn))
            width = level.width
        if not level.last:
            stages.append(Stage(width, width, False, False, "down"))
    return stages


def decoder_stages(model_channels: int, levels: Sequence[Level], num_res_blocks: int | None = None) -> list[Stage]:
    """The output blocks: ``res_blocks + 1`` stages per level, coarsest first, each concatenating the skip of one
    input block (the last one in, the first one out); every level but the finest ends with ×2 up."""
    skips = [model_channels] + [s.c_out for s in encoder_stages(model_channels, levels, num_res_blocks)]
    width = skips[-1]
    stages = []
    counts = _stage_counts(levels, num_res_blocks)
    for level in reversed(levels):
        last = counts[level.index]
        for position in range(last + 1):
            up = "up" if level.index > 0 and position == last else None
            stages.append(
                Stage(width + skips.pop(), level.width, True, level.attends(position), up, level.disable_self_attn)
            )
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

    def _attention(self, width: int, decoder: bool, disable_self_attn: bool) -> nn.Module:
        """``attention(width, decoder)``, with ``disable_self_attn=True`` passed only where it is set (so factories
        that never build transformers need not take it)."""
        if disable_self_attn:
            return self.attention(width, decoder, disable_self_attn=True)
        return self.attention(width, decoder)

    def stage(self, spec: Stage, decoder: bool) -> TimestepEmbedSequential:
        layers = [self.res(spec.c_in, spec.c_out)] if spec.res else []
        if spec.attention:
            layers.append(self._attention(spec.c_out, decoder, spec.disable_self_attn))
        if spec.resample is not None:
            layers.append(self.resampler(spec.c_out, spec.resample))
        return TimestepEmbedSequential(*layers)

    def middle(self, width: int, disable_self_attn: bool = False) -> TimestepEmbedSequential:
        return TimestepEmbedSequential(
            self.res(width), self._attention(width, False, disable_self_attn), self.res(width)
        )


class Torso(NamedTuple):
    input_blocks: nn.ModuleList
    middle_block: TimestepEmbedSequential
    widths: list[int]  # output width of each input block, then of the middle block


def build_torso(
    parts: UNetParts,
    in_channels: int,
    model_channels: int,
    levels: Sequence[Level],
    num_res_blocks: int | None = None,
    disable_middle_self_attn: bool = False,
) -> Torso:
    """The stem conv, the input levels and the middle block (``num_res_blocks``: see :func:`encoder_stages`)."""
    stem = TimestepEmbedSequential(conv_nd(parts.dims, in_channels, model_channels, 3, padding=1))
    stages = encoder_stages(model_channels, levels, num_res_blocks)
    blocks = nn.ModuleList([stem, *(parts.stage(spec, decoder=False) for spec in stages)])
    width = stages[-1].c_out if stages else model_channels
    widths = [model_channels, *(spec.c_out for spec in stages), width]
    return Torso(blocks, parts.middle(width, disable_middle_self_attn), widths)
