"""Attention layers of the latent-diffusion UNet: cross-attention, transformer blocks, the spatial transformer.

These are the reference blocks: each forward is the block's equation and runs the same way for training and
sampling. Every softmax attention goes through ``torch.nn.functional.scaled_dot_product_attention``, so this code
never builds the ``(tokens × tokens)`` weight matrix itself. Inference-only variants of some blocks live in
``ldm.modules.fast`` and are swapped in by ``ldm.inference.optimize_for_inference``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, KeysView, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.legacy.attention import LinearAttention, SpatialSelfAttention
from ldm.modules.diffusionmodules.util import checkpoint, zero_module
from ldm.util import SettingError, default

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


def exists(val: object) -> bool:
    """Whether ``val`` is not None (the original's name here; ``ldm.util.exists`` calls its argument ``x``)."""
    return val is not None

# --------------------------------------------------------------------------------------------------------
# Small helpers (the module's public functions)
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
    """Gated GELU: ``a ⊙ GELU(g)`` with ``[a, g] = x W + b`` split in halves; ``(..., dim_in) -> (..., dim_out)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # (..., dim_out) each
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """``W₂ · Dropout(act(x)) + b₂`` on ``(..., dim) -> (..., dim_out)``, ``act`` = GEGLU (``glu``) or
    ``GELU(W₁ x + b₁)``, hidden width ``mult · dim``."""

    def __init__(
        self, dim: int, dim_out: int | None = None, mult: float = 4, glu: bool = False, dropout: float = 0.0
    ) -> None:
        super().__init__()
        hidden = int(dim * mult)
        expand = GEGLU(dim, hidden) if glu else nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.net = nn.Sequential(expand, nn.Dropout(dropout), nn.Linear(hidden, default(dim_out, dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------------


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean key mask ``(B, ...)`` (True = attend) -> additive bias ``(B, 1, 1, J)``.

    Masked keys get ``-finfo(dtype).max`` (not ``-inf``), so a fully masked row attends uniformly instead of
    producing NaN.
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
    """Multi-head attention of ``x (B, N, query_dim)`` over ``context (B, M, context_dim)`` (over ``x`` itself
    when ``context`` is None): ``to_out(concat_h softmax(Q_h K_hᵀ / √dim_head) V_h)``.

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
        width = heads * dim_head
        source_dim = query_dim if context_dim is None else context_dim
        self.heads, self.scale = heads, dim_head**-0.5
        for name, fan_in in (("to_q", query_dim), ("to_k", source_dim), ("to_v", source_dim)):
            self.add_module(name, nn.Linear(fan_in, width, bias=False))
        self.to_out = nn.Sequential(nn.Linear(width, query_dim), nn.Dropout(dropout))
        self.slice_size: int | None = None

    def _heads_apart(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, L, heads·d) -> (B, heads, L, d)``."""
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x (B, N, query_dim)``, ``context (B, M, context_dim)``, ``mask (B, M)`` bool -> ``(B, N, query_dim)``."""
        source = x if context is None else context  # (B, M, context_dim)
        q = self._heads_apart(self.to_q(x))  # (B, heads, N, d)
        k = self._heads_apart(self.to_k(source))  # (B, heads, M, d)
        v = self._heads_apart(self.to_v(source))  # (B, heads, M, d)
        bias = None if mask is None else _additive_mask(mask, q.dtype)  # (B, 1, 1, M)
        out = attention(q, k, v, attn_mask=bias, scale=self.scale, slice_size=self.slice_size)  # (B, heads, N, d)
        return self.to_out(out.transpose(1, 2).flatten(2))  # (B, N, query_dim)


# --------------------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------------------


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block on ``(B, N, dim)``: a first attention, cross-attention to ``context``, then the
    feed-forward, each added to its input:
    ``x += attn1(norm1(x)[, context])``; ``x += attn2(norm2(x), context)``; ``x += ff(norm3(x))``.

    ``attn1`` is self-attention, or with ``disable_self_attn`` a second cross-attention to ``context`` (its keys and
    values then take ``context_dim`` features). With ``checkpoint`` the activations are recomputed in the backward
    pass instead of stored.
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
        disable_self_attn: bool = False,
    ) -> None:
        super().__init__()

        def attending_to(source_dim: int | None) -> CrossAttention:
            return CrossAttention(dim, source_dim, heads=n_heads, dim_head=d_head, dropout=dropout)

        self.disable_self_attn = disable_self_attn
        # construction order = parameter-initialisation order (seeded models depend on it)
        self.attn1 = attending_to(context_dim if disable_self_attn else None)
        self.ff = FeedForward(dim, glu=gated_ff, dropout=dropout)
        self.attn2 = attending_to(context_dim)
        for index in (1, 2, 3):
            self.add_module(f"norm{index}", nn.LayerNorm(dim))
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, N, dim)``, ``context (B, M, context_dim)`` -> ``(B, N, dim)``."""
        return checkpoint(self._forward, (x, context), self.parameters(), self.checkpoint)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        first_source = context if self.disable_self_attn else None  # None: attend to x itself
        x = x + self.attn1(self.norm1(x), context=first_source)  # (B, N, dim)
        x = x + self.attn2(self.norm2(x), context=context)  # (B, N, dim)
        return x + self.ff(self.norm3(x))  # (B, N, dim)


def _pointwise_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """A 1x1 conv ``(B, c_in, H, W) -> (B, c_out, H, W)``: the same linear map at every pixel."""
    return nn.Conv2d(c_in, c_out, kernel_size=1)


def _per_token(projection: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv or a linear layer applied to the token view: ``(B, HW, c_in) -> (B, HW, c_out)``,
    ``tokens · Wᵀ + b``. A conv's ``(c_out, c_in, 1, 1)`` weight is read as a matrix (the conv's numbers within
    float rounding, without re-laying the activations out between the image and token views)."""
    if isinstance(projection, nn.Conv2d):
        return F.linear(tokens, projection.weight.flatten(1), projection.bias)
    return projection(tokens)


ContextDim = int | Sequence[int] | None
Context = torch.Tensor | Sequence[torch.Tensor | None] | None


def _one_per_block(value: Sequence, depth: int, name: str) -> list:
    """A per-block list: a single entry serves every block, otherwise one entry per block."""
    items = list(value)
    if len(items) == 1:
        return items * depth
    if len(items) != depth:
        raise SettingError(
            f"SpatialTransformer: {name} lists {len(items)} entries for {depth} transformer blocks; give one entry "
            "(shared by every block) or one per block (transformer_depth)."
        )
    return items


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of an image ``(B, C, H, W)``, cross-attending to ``context (B, M, D)``:
    ``x + proj_out(blocks(proj_in(GroupNorm(x))))`` with the blocks on the ``(B, HW, heads·d_head)`` tokens;
    ``proj_out`` is zero-initialised (the layer starts as the identity).

    ``proj_in``/``proj_out`` are 1x1 convs (applied per token), or with ``use_linear`` ``nn.Linear`` layers on the
    tokens (the same map, stored as a matrix). ``depth`` blocks run one after the other; ``context_dim`` and the
    forward's ``context`` are one value for every block or a list with one entry per block (a one-entry list is
    shared). ``disable_self_attn``: each block's first attention also attends to ``context``.
    ``use_checkpoint``: recompute the blocks' activations in the backward pass instead of storing them.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: ContextDim = None,
        disable_self_attn: bool = False,
        use_linear: bool = False,
        use_checkpoint: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.use_linear = in_channels, use_linear
        width = n_heads * d_head
        widths = [context_dim] if context_dim is None or isinstance(context_dim, int) else context_dim
        block_options = {"dropout": dropout, "disable_self_attn": disable_self_attn, "checkpoint": use_checkpoint}
        blocks = [
            BasicTransformerBlock(width, n_heads, d_head, context_dim=source, **block_options)
            for source in _one_per_block(widths, depth, "context_dim")
        ]
        projection = nn.Linear if use_linear else _pointwise_conv
        # built in this order: the order the parameters draw their initial values in
        layers = {
            "norm": Normalize(in_channels),
            "proj_in": projection(in_channels, width),
            "transformer_blocks": nn.ModuleList(blocks),
            "proj_out": zero_module(projection(width, in_channels)),
        }
        for name, layer in layers.items():
            self.add_module(name, layer)

    def _contexts(self, context: Context) -> list[torch.Tensor | None]:
        if context is None or isinstance(context, torch.Tensor):
            return [context] * len(self.transformer_blocks)
        return _one_per_block(context, len(self.transformer_blocks), "context")

    def forward(self, x: torch.Tensor, context: Context = None) -> torch.Tensor:
        """``x (B, C, H, W)``, ``context (B, M, D)`` (or a list of them, see the class) -> ``(B, C, H, W)`` in the
        memory format of ``x`` (the residual sum takes the layout of its first operand)."""
        height, width = x.shape[-2:]
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")  # (B, HW, C)
        tokens = _per_token(self.proj_in, tokens)  # (B, HW, inner)
        for block, source in zip(self.transformer_blocks, self._contexts(context), strict=True):
            tokens = block(tokens, context=source)  # (B, HW, inner)
        tokens = _per_token(self.proj_out, tokens)  # (B, HW, C)
        return x + rearrange(tokens, "b (h w) c -> b c h w", h=height, w=width)  # (B, C, H, W)


#: The original's flag for its xformers path; this package never uses xformers (PyTorch's SDPA is its fast path).
XFORMERS_IS_AVAILBLE = False

#: The original's xformers cross-attention has CrossAttention's signature and weight names; here they are one class.
MemoryEfficientCrossAttention = CrossAttention
