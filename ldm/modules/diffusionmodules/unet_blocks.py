"""Building blocks of the latent-diffusion UNet (descended from openai/guided-diffusion ``unet.py``).

Timestep-conditioned containers, ×2 resampling, ``ResBlock``, the self-attention ``AttentionBlock`` with its
two ``qkv`` layouts, ``AttentionPool2d`` and the fp16 conversion helpers. ``openaimodel`` re-exports all of
them, so ``ldm.modules.diffusionmodules.openaimodel.ResBlock`` etc. keep working.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.util import avg_pool_nd, checkpoint, conv_nd, linear, normalization, zero_module

# --------------------------------------------------------------------------------------------------------
# Sequential containers
# --------------------------------------------------------------------------------------------------------


class TimestepBlock(nn.Module):
    """A module whose ``forward`` takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the module to ``x`` given the timestep embeddings ``emb (B, E)``."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """``nn.Sequential`` that hands ``emb`` to ``TimestepBlock``s and ``context`` to ``SpatialTransformer``s."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


# --------------------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------------------


def _check_channels(x: torch.Tensor, channels: int, layer: str) -> None:
    if x.shape[1] != channels:
        raise ValueError(f"{layer} expects {channels} input channels, got a tensor of shape {tuple(x.shape)}")


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling (the inner two dims for ``dims=3``), optionally followed by a 3x3 conv."""

    def __init__(
        self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None, padding: int = 1
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, self.channels, "Upsample")
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class TransposedUpsample(nn.Module):
    """Learned ×2 upsampling by a ``ks``×``ks`` stride-2 transposed conv without padding:
    ``(B, C, H, W) -> (B, out_channels, 2H + ks − 2, 2W + ks − 2)``."""

    def __init__(self, channels: int, out_channels: int | None = None, ks: int = 5) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.up = nn.ConvTranspose2d(self.channels, self.out_channels, kernel_size=ks, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class Downsample(nn.Module):
    """×2 downsampling (the inner two dims for ``dims=3``) by a strided 3x3 conv or average pooling."""

    def __init__(
        self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None, padding: int = 1
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=padding)
        elif self.channels != self.out_channels:
            raise ValueError(
                f"Downsample without a conv cannot change channels ({channels} -> {out_channels}); "
                "set use_conv=True (conv_resample in UNetModel) or keep out_channels equal to channels."
            )
        else:
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, self.channels, "Downsample")
        return self.op(x)


# --------------------------------------------------------------------------------------------------------
# Residual block
# --------------------------------------------------------------------------------------------------------


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding ``emb (B, E)``.

    ``h = in_layers(x)`` (norm, SiLU, [up/down], conv); then either ``h + emb_layers(emb)`` or, with
    ``use_scale_shift_norm``, ``norm(h)·(1 + scale) + shift``; ``out_layers`` (SiLU, dropout, zero-init conv);
    output ``skip(x) + h``, where ``skip`` is identity, a 3x3 conv (``use_conv``) or a 1x1 conv.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x (B, channels, ...)``, ``emb (B, emb_channels)`` -> ``(B, out_channels, ...)``."""
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_conv(self.h_upd(in_rest(x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *((1,) * (h.ndim - emb_out.ndim)))
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


# --------------------------------------------------------------------------------------------------------
# Self-attention block
# --------------------------------------------------------------------------------------------------------


def count_flops_attn(model: nn.Module, _x: tuple, y: tuple) -> None:
    """``thop`` counter for QKV attention: two matmuls of ``B · T² · C`` multiply-adds each, added to
    ``model.total_ops``; ``y[0]`` is the ``(B, C, ...)`` output with ``T`` positions."""
    b, c, *spatial = y[0].shape
    matmul_ops = 2 * b * math.prod(spatial) ** 2 * c
    model.total_ops += torch.DoubleTensor([matmul_ops])


class QKVAttentionLegacy(nn.Module):
    """Attention on packed ``qkv (B, heads·3·ch, T)``, split per head first ("legacy" order) -> ``(B, heads·ch, T)``.

    ``softmax(Qᵀ K / √ch) Vᵀ`` per head, via scaled_dot_product_attention.
    """

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        qkv = rearrange(qkv, "b w t -> b t w").contiguous()
        q, k, v = rearrange(qkv, "b t (h three c) -> three b h t c", h=self.n_heads, three=3)
        out = F.scaled_dot_product_attention(q, k, v)
        return rearrange(out, "b h t c -> b (h c) t")

    @staticmethod
    def count_flops(model: nn.Module, _x: tuple, y: tuple) -> None:
        count_flops_attn(model, _x, y)


class QKVAttention(nn.Module):
    """Attention on packed ``qkv (B, 3·heads·ch, T)``, split into q, k, v first ("new" order) -> ``(B, heads·ch, T)``.

    ``softmax(Qᵀ K / √ch) Vᵀ`` per head, via scaled_dot_product_attention.
    """

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        qkv = rearrange(qkv, "b w t -> b t w").contiguous()
        q, k, v = rearrange(qkv, "b t (three h c) -> three b h t c", h=self.n_heads, three=3)
        out = F.scaled_dot_product_attention(q, k, v)
        return rearrange(out, "b h t c -> b (h c) t")

    @staticmethod
    def count_flops(model: nn.Module, _x: tuple, y: tuple) -> None:
        count_flops_attn(model, _x, y)


class AttentionBlock(nn.Module):
    """Self-attention over the positions of ``(B, C, ...)``: ``x + proj_out(attention(qkv(norm(x))))``.

    The head count is ``num_heads``, or ``channels // num_head_channels`` when that is not -1.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        elif channels % num_head_channels:
            raise ValueError(
                f"AttentionBlock: channels {channels} is not divisible by num_head_channels {num_head_channels}; "
                "choose num_head_channels (or model_channels/channel_mult) so that it divides every width."
            )
        else:
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads) if use_new_attention_order else QKVAttentionLegacy(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: ``(B, embed_dim, H, W) -> (B, output_dim)``.

    The mean over positions is prepended as a query token, a learned positional embedding
    ``(embed_dim, H·W + 1)`` is added, and the output is that token after multi-head self-attention
    (``embed_dim // num_heads_channels`` heads) and ``c_proj``.
    """

    def __init__(
        self, spacial_dim: int, embed_dim: int, num_heads_channels: int, output_dim: int | None = None
    ) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "b c ... -> b c (...)")
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]


# --------------------------------------------------------------------------------------------------------
# fp16 conversion
# --------------------------------------------------------------------------------------------------------

_FP16_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.LayerNorm)


def convert_module_to_f16(module: nn.Module) -> None:
    """Cast the parameters of a conv / linear / layer-norm layer to float16 (group norms stay float32).

    The original's is a no-op placeholder; see ``UNetModel``'s ``use_fp16``."""
    if isinstance(module, _FP16_LAYERS):
        module.to(torch.float16)


def convert_module_to_f32(module: nn.Module) -> None:
    """Undo :func:`convert_module_to_f16`."""
    if isinstance(module, _FP16_LAYERS):
        module.to(torch.float32)
