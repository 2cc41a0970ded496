"""Attention layers that no model config of this package builds, kept for code importing them from
``ldm.modules.attention`` (which re-exports them)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

__all__ = ["LinearAttention", "SpatialSelfAttention"]


class LinearAttention(nn.Module):
    """Linear attention on ``(B, dim, H, W)``: per head, keys are softmax-normalised over the positions and
    ``out = (softmax(K) Vᵀ)ᵀ Q``, a ``(dim_head × dim_head)`` context instead of ``(HW × HW)`` weights."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32) -> None:
        super().__init__()
        width = heads * dim_head
        self.heads = heads
        self.to_qkv = nn.Conv2d(dim, 3 * width, kernel_size=1, bias=False)  # q, k, v of every head at once
        self.to_out = nn.Conv2d(width, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        qkv = rearrange(self.to_qkv(x), "b (s n d) h w -> s b n d (h w)", s=3, n=self.heads)  # 3 × (B, n, d, HW)
        q, k, v = qkv.unbind(0)
        summary = torch.einsum("bnds,bnes->bnde", k.softmax(dim=-1), v)  # (B, n, d, d)
        out = torch.einsum("bnde,bnds->bnes", summary, q)  # (B, n, d, HW)
        return self.to_out(rearrange(out, "b n d (h w) -> b (n d) h w", h=height, w=width))  # (B, dim, H, W)


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the pixels of ``(B, C, H, W)`` with a residual connection:
    ``x + proj_out(softmax(q kᵀ / √C) v)``, ``q, k, v`` 1×1 convs of ``GroupNorm(x)``."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.norm = nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)
        for name in ("q", "k", "v", "proj_out"):
            self.add_module(name, nn.Conv2d(in_channels, in_channels, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        h = self.norm(x)  # (B, C, H, W)
        q, k, v = (rearrange(conv(h), "b c h w -> b 1 (h w) c") for conv in (self.q, self.k, self.v))  # (B, 1, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        return x + self.proj_out(rearrange(h, "b 1 (h w) c -> b c h w", h=height, w=width))  # (B, C, H, W)
