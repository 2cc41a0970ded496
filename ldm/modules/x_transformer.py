"""The small pre-norm transformer encoder the LDM text-to-image model trains from scratch.

The configuration ``BERTEmbedder`` and ``TransformerEmbedder`` use: learned absolute positions, ``depth`` blocks of
(self-attention, feed-forward), each ``x + f(LayerNorm(x))``, 8 heads of 64 channels whatever the width, GELU MLP of 4x
width, no padding mask, a final LayerNorm. State-dict keys: ``token_emb``, ``pos_emb.emb``, ``attn_layers.layers.<i>.0``
norm / ``.1`` block, ``norm``, ``to_logits``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ldm.modules.attention import GEGLU
from ldm.modules.x_transformer_parts import (
    FixedPositionalEmbedding,
    GRUGating,
    Intermediates,
    LayerIntermediates,
    Residual,
    Rezero,
    RMSNorm,
    Scale,
    ScaleNorm,
    always,
    default,
    equals,
    exists,
    group_by_key_prefix,
    group_dict_by_key,
    groupby_prefix_and_trim,
    max_neg_value,
    not_equals,
    pick_and_pop,
    string_begins_with,
)

__all__ = [
    "AbsolutePositionalEmbedding", "Attention", "Encoder", "FeedForward", "TransformerWrapper",
    # the original module's helpers, from ldm.modules.x_transformer_parts (and GEGLU from ldm.modules.attention)
    "FixedPositionalEmbedding", "GEGLU", "GRUGating", "Intermediates", "LayerIntermediates", "Residual", "Rezero",
    "RMSNorm", "Scale", "ScaleNorm", "always", "default", "equals", "exists", "group_by_key_prefix",
    "group_dict_by_key", "groupby_prefix_and_trim", "max_neg_value", "not_equals", "pick_and_pop",
    "string_begins_with",
]

DEFAULT_DIM_HEAD = 64


class AbsolutePositionalEmbedding(nn.Module):
    """Learned position vectors ``emb[0:N]`` for a sequence ``(B, N, D)``, returned as ``(1, N, D)``."""

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(torch.arange(x.shape[1], device=x.device))[None]


class Attention(nn.Module):
    """Multi-head self-attention ``softmax(q kᵀ / sqrt(dim_head)) v`` on ``(B, N, dim)``; q, k, v without bias."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = DEFAULT_DIM_HEAD) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(f(x), "b n (h d) -> b h n d", h=self.heads) for f in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class FeedForward(nn.Module):
    """``Linear(dim, mult·dim) → GELU → Linear(mult·dim, dim)`` with the keys ``net.0.0`` and ``net.2``.

    ``net.1`` is an identity in the dropout slot (dropout probability is 0 in every LDM config).
    """

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(
            nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU()), nn.Identity(), nn.Linear(inner_dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """``depth`` pre-norm residual pairs: ``x += Attention(LN(x))`` then ``x += FeedForward(LN(x))``.

    ``layers[2i]`` is the i-th attention block, ``layers[2i + 1]`` its feed-forward block; each entry is
    ``ModuleList([LayerNorm, block])``.
    """

    def __init__(self, dim: int, depth: int, heads: int = 8, dim_head: int = DEFAULT_DIM_HEAD) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), Attention(dim, heads=heads, dim_head=dim_head)]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), FeedForward(dim)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim) → (B, N, dim)``."""
        for norm, block in self.layers:
            x = x + block(norm(x))
        return x


class TransformerWrapper(nn.Module):
    """Token ids ``(B, N)`` → embeddings + positions → ``attn_layers`` → LayerNorm → ``(B, N, dim)`` or logits."""

    def __init__(self, *, num_tokens: int, max_seq_len: int, attn_layers: Encoder, emb_dropout: float = 0.0) -> None:
        super().__init__()
        dim = attn_layers.dim
        self.max_seq_len = max_seq_len
        self.num_tokens = num_tokens
        self.token_emb = nn.Embedding(num_tokens, dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = AbsolutePositionalEmbedding(dim, max_seq_len)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.attn_layers = attn_layers
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens)

    def forward(self, x: torch.Tensor, return_embeddings: bool = False) -> torch.Tensor:
        """``(B, N)`` int ids → ``(B, N, dim)`` embeddings, or ``(B, N, num_tokens)`` logits by default."""
        if x.shape[1] > self.max_seq_len:
            raise ValueError(
                f"token sequence of length {x.shape[1]} exceeds max_seq_len={self.max_seq_len}; "
                "truncate the tokens or raise max_seq_len in the config"
            )
        h = self.emb_dropout(self.token_emb(x) + self.pos_emb(x))
        h = self.norm(self.attn_layers(h))
        return h if return_embeddings else self.to_logits(h)
