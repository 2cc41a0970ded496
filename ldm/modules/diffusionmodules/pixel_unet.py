"""``Model``: the DDPM pixel-space UNet (Ho et al.) built from the autoencoder's blocks, and its time embedding.

``Model(x (B, in_channels, H, W), t (B,), context (B, C', H, W)) -> (B, out_ch, H, W)``. Re-exported by
:mod:`ldm.modules.diffusionmodules.model` under its original path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.diffusionmodules.model import (
    Downsample,
    Normalize,
    ResnetBlock,
    Upsample,
    make_attn,
    nonlinearity,
)


def get_timestep_embedding(timesteps: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """DDPM sinusoidal embedding ``(B,) -> (B, embedding_dim)``: ``[sin(t·ω_i), cos(t·ω_i)]`` with
    ``ω_i = 10000^(−i/(half − 1))``, ``half = embedding_dim // 2`` (zero-padded when ``embedding_dim`` is odd).

    Note the order (sin first) and the ``half − 1`` differ from ``util.timestep_embedding`` of the UNetModel.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"get_timestep_embedding expects a (B,) tensor of timesteps, got {tuple(timesteps.shape)}.")
    half_dim = embedding_dim // 2
    freqs = torch.exp(torch.arange(half_dim, dtype=torch.float32) * -(math.log(10000) / (half_dim - 1)))
    args = timesteps.float()[:, None] * freqs.to(device=timesteps.device)[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


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
        if use_linear_attn:
            attn_type = "linear"
        self.ch = ch
        self.temb_ch = ch * 4
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.use_timestep = use_timestep
        if use_timestep:
            self.temb = nn.Module()
            self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])

        def res_block(block_in: int, block_out: int) -> ResnetBlock:
            return ResnetBlock(in_channels=block_in, out_channels=block_out, temb_channels=self.temb_ch,
                               dropout=dropout)

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        curr_res = resolution
        in_ch_mult = (1, *ch_mult)
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(res_block(block_in, block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(make_attn(block_in, attn_type=attn_type))
            down = nn.Module()
            down.block = block
            down.attn = attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, resamp_with_conv)
                curr_res = curr_res // 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = res_block(block_in, block_in)
        self.mid.attn_1 = make_attn(block_in, attn_type=attn_type)
        self.mid.block_2 = res_block(block_in, block_in)

        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            skip_in = ch * ch_mult[i_level]
            for i_block in range(num_res_blocks + 1):
                if i_block == num_res_blocks:
                    skip_in = ch * in_ch_mult[i_level]
                block.append(res_block(block_in + skip_in, block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(make_attn(block_in, attn_type=attn_type))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = Upsample(block_in, resamp_with_conv)
                curr_res = curr_res * 2
            self.up.insert(0, up)  # self.up[i] holds level i

        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x (B, C, H, W)``, ``t (B,)`` (required with ``use_timestep``), ``context (B, C', H, W)``."""
        if context is not None:
            x = torch.cat((x, context), dim=1)
        temb = None
        if self.use_timestep:
            if t is None:
                raise ValueError("Model(use_timestep=True) needs the timesteps t, a (B,) tensor.")
            temb = self.temb.dense[1](nonlinearity(self.temb.dense[0](get_timestep_embedding(t, self.ch))))

        hs = [self.conv_in(x)]
        for i_level, down in enumerate(self.down):
            for i_block, block in enumerate(down.block):
                h = block(hs[-1], temb)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(down.downsample(hs[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block, block in enumerate(up.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))

    def get_last_layer(self) -> torch.Tensor:
        return self.conv_out.weight
