"""``Model``: the DDPM pixel-space UNet (Ho et al.) assembled from the autoencoder's blocks, and its time embedding.

``Model(x (B, in_channels, H, W), t (B,), context (B, C', H, W)) -> (B, out_ch, H, W)``. Configs reach both as
``ldm.modules.diffusionmodules.model.Model`` / ``.get_timestep_embedding``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.diffusionmodules.autoencoder_blocks import (
    Downsample,
    Normalize,
    ResnetBlock,
    Upsample,
    make_attn,
    nonlinearity,
)
from ldm.modules.diffusionmodules.encoder_decoder import _attn_type


def get_timestep_embedding(timesteps: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """DDPM sinusoidal embedding ``(B,) -> (B, embedding_dim)``: ``[sin(t·ω_i), cos(t·ω_i)]`` with
    ``ω_i = 10000^(−i/(half − 1))``, ``half = embedding_dim // 2`` (zero-padded when ``embedding_dim`` is odd).

    The sines come first and the exponent divides by ``half − 1``: this is not ``util.timestep_embedding``.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"get_timestep_embedding expects a (B,) tensor of timesteps, got {tuple(timesteps.shape)}.")
    half = embedding_dim // 2
    step = -math.log(10000) / (half - 1)
    omega = torch.exp(step * torch.arange(half, dtype=torch.float32)).to(timesteps.device)  # (half,)
    phase = torch.outer(timesteps.float(), omega)  # (B, half)
    return F.pad(torch.cat((phase.sin(), phase.cos()), dim=1), (0, embedding_dim - 2 * half))


def _level(blocks: list[nn.Module], attns: list[nn.Module], **resample: nn.Module) -> nn.Module:
    """One resolution level: ``block`` and ``attn`` lists plus an optional ``downsample`` / ``upsample``."""
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    for name, module in resample.items():
        level.add_module(name, module)
    return level


def _blocks_and_attention(level: nn.Module) -> Iterator[tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]]:
    """``(ResnetBlock, attention)`` pairs of a level; the attention is the identity where the level has none."""
    attns = level.attn if len(level.attn) else itertools.repeat(lambda h: h)
    return zip(level.block, attns)


class Model(nn.Module):
    """UNet with skip connections between every down block and its mirror, timestep-conditioned ResnetBlocks
    (``temb_ch = 4·ch``, unless ``use_timestep=False``) and attention at ``attn_resolutions``.

    Per level: ``num_res_blocks`` ResnetBlocks down (then a Downsample except at the last level),
    ``num_res_blocks + 1`` up, each taking the concatenation with the matching skip; ``context`` of the
    same spatial size is concatenated to the input along the channels.
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
        in_channels: int,
        resolution: int,
        use_timestep: bool = True,
        use_linear_attn: bool = False,
        attn_type: str = "vanilla",
    ) -> None:
        super().__init__()
        attn_type = _attn_type(attn_type, use_linear_attn)
        self.ch = ch
        self.temb_ch = 4 * ch
        self.num_resolutions = levels = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.use_timestep = use_timestep
        if use_timestep:
            self.temb = nn.Module()
            self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])

        widths = [ch * m for m in ch_mult]
        down_res = [resolution // 2**i for i in range(levels)]
        up_res = [down_res[-1] * 2 ** (levels - 1 - i) for i in range(levels)]

        def resnet(c_in: int, c_out: int) -> ResnetBlock:
            return ResnetBlock(in_channels=c_in, out_channels=c_out, dropout=dropout, temb_channels=self.temb_ch)

        def stack(c: int, width: int, n: int, res: int, skips: list[int] | None) -> tuple[list, list, int]:
            """``n`` ResnetBlocks to ``width`` (each input widened by a popped skip when ``skips`` is given)."""
            blocks, attns = [], []
            for _ in range(n):
                blocks.append(resnet(c + (skips.pop() if skips is not None else 0), width))
                c = width
                if res in attn_resolutions:
                    attns.append(make_attn(c, attn_type=attn_type))
            return blocks, attns, c

        # Down path; `kept` lists the channel counts of the tensors the up path concatenates, in push order.
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1)
        c, kept, down = ch, [ch], []
        for i in range(levels):
            blocks, attns, c = stack(c, widths[i], num_res_blocks, down_res[i], None)
            kept += [c] * num_res_blocks
            resample = {"downsample": Downsample(c, resamp_with_conv)} if i < levels - 1 else {}
            kept += [c] * len(resample)
            down.append(_level(blocks, attns, **resample))
        self.down = nn.ModuleList(down)

        self.mid = nn.Module()
        self.mid.block_1 = resnet(c, c)
        self.mid.attn_1 = make_attn(c, attn_type=attn_type)
        self.mid.block_2 = resnet(c, c)

        # Up path, deepest level first; self.up[i] is level i.
        up: dict[int, nn.Module] = {}
        for i in reversed(range(levels)):
            blocks, attns, c = stack(c, widths[i], num_res_blocks + 1, up_res[i], kept)
            resample = {"upsample": Upsample(c, resamp_with_conv)} if i > 0 else {}
            up[i] = _level(blocks, attns, **resample)
        self.up = nn.ModuleList(up[i] for i in range(levels))

        self.norm_out = Normalize(c)
        self.conv_out = nn.Conv2d(c, out_ch, kernel_size=3, padding=1)

    def _time_embedding(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """``dense_1(swish(dense_0(sinusoid(t))))``: ``(B,) -> (B, 4·ch)``; None without ``use_timestep``."""
        if not self.use_timestep:
            return None
        if t is None:
            raise ValueError("Model(use_timestep=True) needs the timesteps t, a (B,) tensor.")
        first, second = self.temb.dense
        return second(nonlinearity(first(get_timestep_embedding(t, self.ch))))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x (B, C, H, W)``, ``t (B,)`` (required with ``use_timestep``), ``context (B, C', H, W)``."""
        if context is not None:
            x = torch.cat((x, context), dim=1)  # (B, in_channels, H, W)
        temb = self._time_embedding(t)  # (B, 4·ch) or None

        skips = [self.conv_in(x)]  # (B, ch, H, W)
        for level in self.down:
            for block, attn in _blocks_and_attention(level):
                skips.append(attn(block(skips[-1], temb)))  # (B, ch·ch_mult[i], H_i, W_i)
            if "downsample" in level._modules:
                skips.append(level.downsample(skips[-1]))  # (B, ch·ch_mult[i], H_i/2, W_i/2)

        h = self.mid.block_1(skips[-1], temb)  # (B, ch·ch_mult[-1], H_L, W_L)
        h = self.mid.block_2(self.mid.attn_1(h), temb)
        for level in reversed(self.up):
            for block, attn in _blocks_and_attention(level):
                h = attn(block(torch.cat((h, skips.pop()), dim=1), temb))  # (B, ch·ch_mult[i], H_i, W_i)
            if "upsample" in level._modules:
                h = level.upsample(h)  # (B, ch·ch_mult[i], 2H_i, 2W_i)
        return self.conv_out(nonlinearity(self.norm_out(h)))  # (B, out_ch, H, W)

    def get_last_layer(self) -> torch.Tensor:
        return self.conv_out.weight
