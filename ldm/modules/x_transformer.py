"""``ldm.modules.x_transformer``: the transformer the LDM text-to-image model trains from scratch, with the interface
of the original module (a copy of lucidrains' x-transformers).

``TransformerWrapper`` turns token ids into embeddings and runs an ``AttentionLayers`` stack
(:mod:`ldm.modules.x_transformer_layers`) built from :class:`Attention` (:mod:`ldm.modules.x_transformer_attention`)
and ``FeedForward``; the small helpers live in :mod:`ldm.modules.x_transformer_parts`. The LDM configs
(``BERTEmbedder``, ``TransformerEmbedder``) use ``Encoder(dim=n_embed, depth=n_layer)``: pre-norm LayerNorm blocks
of 8 heads × 64 channels, a GELU MLP of 4× width, learned absolute positions, a final LayerNorm.

State-dict keys: ``memory_tokens``, ``token_emb``, ``pos_emb.emb``, ``project_emb``, ``attn_layers.layers.<i>.0``
(norm) / ``.1`` (block) / ``.2`` (GRU gate), ``norm``, ``to_logits``.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import repeat
from torch import nn

from ldm.modules.attention import GEGLU, FeedForward
from ldm.modules.x_transformer_attention import Attention
from ldm.modules.x_transformer_layers import AttentionLayers, Encoder
from ldm.modules.x_transformer_parts import (
    DEFAULT_DIM_HEAD,
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
    "AbsolutePositionalEmbedding", "Attention", "AttentionLayers", "DEFAULT_DIM_HEAD", "Encoder", "FeedForward",
    "TransformerWrapper",
    # the original module's helpers, from ldm.modules.x_transformer_parts (GEGLU from ldm.modules.attention)
    "FixedPositionalEmbedding", "GEGLU", "GRUGating", "Intermediates", "LayerIntermediates", "Residual", "Rezero",
    "RMSNorm", "Scale", "ScaleNorm", "always", "default", "equals", "exists", "group_by_key_prefix",
    "group_dict_by_key", "groupby_prefix_and_trim", "max_neg_value", "not_equals", "pick_and_pop",
    "string_begins_with",
]


class AbsolutePositionalEmbedding(nn.Module):
    """Learned position vectors ``emb[0:N]`` for a sequence ``(B, N, ...)``, returned as ``(1, N, dim)``."""

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        self.init_()

    def init_(self) -> None:
        """``emb ~ N(0, 0.02²)``."""
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(torch.arange(x.shape[1], device=x.device))[None]


class TransformerWrapper(nn.Module):
    """Token ids ``(B, N)`` → embedding (+ learned positions) → ``attn_layers`` → LayerNorm → ``(B, N, dim)``
    embeddings or ``(B, N, num_tokens)`` logits.

    ``emb_dim`` ≠ ``dim`` adds a ``project_emb`` Linear; ``num_memory_tokens`` learned tokens (Burtsev et al. 2020,
    "Memory Transformer") are prepended inside and dropped from the output; ``tie_embedding`` makes the logits
    ``h · token_embᵀ``; ``max_mem_len`` is how many positions of each layer's hidden states ``return_mems`` keeps
    (0: all of them). Learned positions are skipped when ``use_pos_emb`` is False or the layers carry their own.
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        max_seq_len: int,
        attn_layers: AttentionLayers,
        emb_dim: int | None = None,
        max_mem_len: float = 0.0,
        emb_dropout: float = 0.0,
        num_memory_tokens: int | None = None,
        tie_embedding: bool = False,
        use_pos_emb: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError(f"TransformerWrapper: attn_layers must be an Encoder or AttentionLayers, not "
                            f"{type(attn_layers).__name__}")
        self.num_tokens, self.max_seq_len, self.max_mem_len = num_tokens, max_seq_len, max_mem_len
        # creation order = the original's, so that one seed gives the same initial weights
        learned_positions = use_pos_emb and not attn_layers.has_pos_emb
        self._embeddings(attn_layers.dim, default(emb_dim, attn_layers.dim), learned_positions, emb_dropout)
        self.attn_layers = attn_layers
        self.norm = nn.LayerNorm(attn_layers.dim)
        self.init_()
        self.to_logits = self._tied_logits if tie_embedding else nn.Linear(attn_layers.dim, num_tokens)
        self._memory_tokens(num_memory_tokens or 0)

    def _embeddings(self, dim: int, emb_dim: int, learned_positions: bool, dropout: float) -> None:
        """``token_emb``, ``pos_emb`` (learned, or the constant 0), ``emb_dropout``, ``project_emb`` (emb_dim → dim)."""
        self.token_emb = nn.Embedding(self.num_tokens, emb_dim)
        self.pos_emb = AbsolutePositionalEmbedding(emb_dim, self.max_seq_len) if learned_positions else always(0)
        self.emb_dropout = nn.Dropout(dropout)
        self.project_emb = nn.Linear(emb_dim, dim) if emb_dim != dim else nn.Identity()

    def _memory_tokens(self, count: int) -> None:
        """``count`` learned tokens ``(count, dim)`` ~ N(0, 1), prepended to every sequence."""
        self.num_memory_tokens = count
        if count > 0:
            self.memory_tokens = nn.Parameter(torch.randn(count, self.attn_layers.dim))
            if hasattr(self.attn_layers, "num_memory_tokens"):  # a stack that wants to know (none here does)
                self.attn_layers.num_memory_tokens = count

    def init_(self) -> None:
        """``token_emb ~ N(0, 0.02²)``."""
        nn.init.normal_(self.token_emb.weight, std=0.02)

    def _tied_logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.token_emb.weight.t()

    def _kept_mems(self, mems: list[torch.Tensor] | None, hiddens: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each self-attention layer's memory for the next segment: ``[old mem, hiddens]``, the last
        ``max_mem_len`` positions (all when 0), detached."""
        joined = hiddens if mems is None else [torch.cat(pair, dim=-2) for pair in zip(mems, hiddens)]
        keep = int(self.max_mem_len)
        return [(t[..., -keep:, :] if keep > 0 else t).detach() for t in joined]

    def forward(
        self,
        x: torch.Tensor,
        return_embeddings: bool = False,
        mask: torch.Tensor | None = None,
        return_mems: bool = False,
        return_attn: bool = False,
        mems: list[torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``x (B, N)`` int ids, ``mask (B, N)`` bool → logits ``(B, N, num_tokens)`` or embeddings ``(B, N, dim)``;
        with ``return_mems`` also the per-layer memories, else with ``return_attn`` the post-softmax maps.

        ``kwargs`` (``context``, ``context_mask``) go to ``attn_layers``.
        """
        batch, length = x.shape
        if isinstance(self.pos_emb, AbsolutePositionalEmbedding) and length > self.max_seq_len:
            raise ValueError(f"token sequence of length {length} exceeds max_seq_len={self.max_seq_len}; "
                             "truncate the tokens or raise max_seq_len in the config")
        h = self.token_emb(x)  # (B, N, emb_dim)
        h = self.project_emb(self.emb_dropout(h + self.pos_emb(h)))  # (B, N, dim)
        n_mem = self.num_memory_tokens
        if n_mem > 0:
            h = torch.cat((repeat(self.memory_tokens, "n d -> b n d", b=batch), h), dim=1)  # (B, n_mem + N, dim)
            if mask is not None:
                mask = torch.cat((mask.new_ones(batch, n_mem), mask), dim=1)
        h, intermediates = self.attn_layers(h, mask=mask, mems=mems, return_hiddens=True,
                                            return_attn_maps=return_attn and not return_mems, **kwargs)
        h = self.norm(h)[:, n_mem:]  # (B, N, dim)
        out = h if return_embeddings else self.to_logits(h)
        if return_mems:
            return out, self._kept_mems(mems, intermediates.hiddens)
        if return_attn:
            return out, [maps.post_softmax_attn for maps in intermediates.attn_intermediates]
        return out
