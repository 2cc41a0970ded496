"""Attention layers of the latent-diffusion UNet: cross-attention, transformer blocks, the spatial transformer.

Every softmax attention here goes through ``torch.nn.functional.scaled_dot_product_attention``, so the
``(tokens × tokens)`` weight matrix is never built by this code (fused kernels avoid it where they can).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, KeysView

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.diffusionmodules.util import checkpoint, zero_module
from ldm.util import default, exists

__all__ = [
    "GEGLU",
    "BasicTransformerBlock",
    "CrossAttention",
    "FeedForward",
    "LinearAttention",
    "Normalize",
    "SpatialSelfAttention",
    "SpatialTransformer",
    "attention",
    "default",
    "exists",
    "init_",
    "max_neg_value",
    "uniq",
    "zero_module",
]

# --------------------------------------------------------------------------------------------------------
# Small helpers (the original module's public functions)
# --------------------------------------------------------------------------------------------------------


def uniq(arr: Iterable) -> KeysView:
    """The distinct elements of ``arr`` in first-seen order (as dict keys)."""
    return {el: True for el in arr}.keys()


def max_neg_value(t: torch.Tensor) -> float:
    """The most negative finite value of ``t``'s dtype (the mask fill value)."""
    return -torch.finfo(t.dtype).max


def Normalize(in_channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, ε = 1e-6 and a learned affine transform."""
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


def init_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: uniform in ``±1/√d``, ``d`` the last dimension; returns ``tensor``."""
    std = 1 / math.sqrt(tensor.shape[-1])
    return tensor.uniform_(-std, std)


# --------------------------------------------------------------------------------------------------------
# Feed-forward
# --------------------------------------------------------------------------------------------------------


class GEGLU(nn.Module):
    """Gated GELU: ``a · GELU(g)`` with ``[a, g] = proj(x)``; ``(..., dim_in) -> (..., dim_out)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """``Linear(GELU or GEGLU)(dim -> mult·dim) -> Dropout -> Linear(-> dim_out)`` on ``(..., dim)``.

    Without autograd (sampling) a gated feed-forward runs on ``INFERENCE_ROWS`` tokens at a time, in place: the
    same per-row math (equal to float rounding; bit-identical at Stable Diffusion's sizes), but its
    ``(tokens × 2·inner)`` intermediate stays a few MB instead of the ~170 MB of a 64x64-latent Stable Diffusion
    block, which is faster on a CPU and lowers the peak memory. Forward hooks on ``net`` and its layers do not fire
    on that path (hooks on the ``FeedForward`` itself do).
    """

    INFERENCE_ROWS = 2048

    def __init__(
        self, dim: int, dim_out: int | None = None, mult: float = 4, glu: bool = False, dropout: float = 0.0
    ) -> None:
        super().__init__()
        inner_dim = int(dim * mult)
        dim_out = default(dim_out, dim)
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        project_in, dropout, _ = self.net
        device = x.device.type
        lean = (
            isinstance(project_in, GEGLU)
            and not torch.is_grad_enabled()
            and not (self.training and dropout.p > 0)
            and not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device))
        )
        return self._gated_inference(x) if lean else self.net(x)

    def _gated_inference(self, x: torch.Tensor) -> torch.Tensor:
        """``a · GELU(g)`` then the output projection, chunk by chunk of rows into one preallocated output."""
        project_in, _, project_out = self.net
        rows = x.reshape(-1, x.shape[-1])
        out = rows.new_empty(rows.shape[0], project_out.out_features)
        for chunk, dest in zip(rows.split(self.INFERENCE_ROWS), out.split(self.INFERENCE_ROWS)):
            a, gate = project_in.proj(chunk).chunk(2, dim=-1)
            a.mul_(torch.ops.aten.gelu_(gate))
            torch.addmm(project_out.bias, a, project_out.weight.t(), out=dest)
        return out.view(*x.shape[:-1], -1)


# --------------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------------


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean key mask ``(B, ...)`` (True = attend) -> additive bias ``(B, 1, 1, J)``.

    Masked keys get ``-finfo(dtype).max`` as in the original, so a fully masked row attends uniformly
    instead of producing NaN.
    """
    keep = rearrange(mask, "b ... -> b 1 1 (...)").bool()
    bias = torch.zeros(keep.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(~keep, -torch.finfo(dtype).max)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    slice_size: int | None = None,
) -> torch.Tensor:
    """``softmax(q kᵀ · scale + attn_mask) v`` for ``q (B, H, N, D)``, ``k, v (B, H, M, D)`` -> ``(B, H, N, D)``;
    ``attn_mask`` broadcasts over the queries: ``(B, H or 1, 1, M)``; ``scale`` defaults to ``1/√D``.

    With ``slice_size`` the queries run in chunks of at most ``slice_size`` positions (each chunk is the same
    row-wise math, so the result is unchanged), bounding the ``(N × M)`` score memory to ``slice_size × M``.
    A float16 ``q`` (fp16 autocast) is computed in float32 outside autocast and cast back: ``q kᵀ`` overflows
    float16 for large activations and the softmax then turns the image black.
    """
    if q.dtype == torch.float16:
        with torch.autocast(device_type=q.device.type, enabled=False):
            mask = attn_mask.float() if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
            out = attention(q.float(), k.float(), v.float(), mask, scale, slice_size)
        return out.to(torch.float16)
    if slice_size is None or slice_size >= q.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return torch.cat(
        [
            F.scaled_dot_product_attention(q_chunk, k, v, attn_mask=attn_mask, scale=scale)
            for q_chunk in q.split(slice_size, dim=2)
        ],
        dim=2,
    )


class CrossAttention(nn.Module):
    """Multi-head attention of ``x (B, N, query_dim)`` over ``context (B, M, context_dim)`` (self-attention
    when ``context`` is None): ``softmax(Q Kᵀ / √dim_head) V`` per head, then ``to_out``.

    ``slice_size`` (an attribute, not a config key; see ``ldm.modules.attention_slicing``): run the attention
    on chunks of at most that many query positions, same output with less memory.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = default(context_dim, query_dim)
        self.scale = dim_head**-0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self.slice_size: int | None = None

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x (B, N, query_dim)``, ``context (B, M, context_dim)``, ``mask (B, M)`` bool -> ``(B, N, query_dim)``."""
        context = default(context, x)
        q, k, v = (
            rearrange(t, "b n (h d) -> b h n d", h=self.heads)
            for t in (self.to_q(x), self.to_k(context), self.to_v(context))
        )
        attn_mask = None if mask is None else _additive_mask(mask, q.dtype)
        out = attention(q, k, v, attn_mask=attn_mask, scale=self.scale, slice_size=self.slice_size)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class LinearAttention(nn.Module):
    """Linear attention on ``(B, dim, H, W)``: keys softmax-normalised over positions, then
    ``out = (softmax(K) Vᵀ)ᵀ Q`` per head, a ``(dim_head × dim_head)`` context instead of ``(HW × HW)``.
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32) -> None:
        super().__init__()
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.to_qkv(x), "b (qkv heads c) h w -> qkv b heads c (h w)", heads=self.heads, qkv=3)
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(rearrange(out, "b heads c (h w) -> b (heads c) h w", h=h, w=w))


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the pixels of ``(B, C, H, W)`` with a residual connection:
    ``x + proj_out(softmax(q kᵀ / √C) v)``, ``q, k, v`` 1×1 convs of ``norm(x)``."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q, self.k, self.v, self.proj_out = (
            nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0) for _ in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        h = self.norm(x)
        q, k, v = (rearrange(layer(h), "b c h w -> b 1 (h w) c") for layer in (self.q, self.k, self.v))
        h = rearrange(F.scaled_dot_product_attention(q, k, v), "b 1 (h w) c -> b c h w", h=height, w=width)
        return x + self.proj_out(h)


# --------------------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------------------


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block on ``(B, N, dim)``:
    ``x += attn1(norm1(x))``; ``x += attn2(norm2(x), context)``; ``x += ff(norm3(x))``.

    With ``checkpoint`` the activations are recomputed in the backward pass instead of stored.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        gated_ff: bool = True,
        checkpoint: bool = True,
    ) -> None:
        super().__init__()
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(
            query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return checkpoint(self._forward, (x, context), self.parameters(), self.checkpoint)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of an image ``(B, C, H, W)``, cross-attending to ``context (B, M, D)``.

    ``GroupNorm -> 1x1 conv (C -> heads·d_head) -> depth × BasicTransformerBlock on (B, HW, ·) -> 1x1 conv
    (zero-initialised) -> + input``.

    ``use_checkpoint`` (as in Stable Diffusion 2's codebase; the original always checkpoints): recompute the
    blocks' activations in the backward pass instead of storing them.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | None = None,
        use_checkpoint: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim, checkpoint=use_checkpoint
            )
            for _ in range(depth)
        )
        self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1, stride=1, padding=0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, C, H, W)``, ``context (B, M, D)`` -> ``(B, C, H, W)`` in the memory format of ``x``.

        The 1x1 ``proj_in``/``proj_out`` convs run as the equal matrix products on the ``(B, HW, C)`` token view,
        which is free for a channels-last ``x``. The residual add takes the layout of its first operand ``x``: a
        channels-last view leaking out of an NCHW model would make every later conv re-layout its weights.
        """
        h, w = x.shape[-2:]
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")
        tokens = F.linear(tokens, self.proj_in.weight.flatten(1), self.proj_in.bias)
        for block in self.transformer_blocks:
            tokens = block(tokens, context=context)
        tokens = F.linear(tokens, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w)
