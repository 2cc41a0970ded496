"""Multi-head attention of ``ldm.modules.x_transformer`` with the x-transformers options the original exposes.

For queries ``q_i`` and keys / values ``k_j, v_j`` (per head, ``dim_head`` channels):

    s_ij = q_i · k_j / sqrt(dim_head) (+ prev_ij)          the scores, plus the previous layer's (residual attention)
    s    ← P_pre-mixed over heads                           talking heads (Shazeer et al. 2020), s'_g = Σ_h s_h P_hg
    s_ij ← −max_float where (i, j) is masked                padding mask (query row and key column), causal mask
    s_ij ← −max_float where s_ij < k-th largest of row i    sparse top-k
    a    = softmax_j(s), then dropout, then mixed by P_post  talking heads after the softmax
    o_i  = Σ_j a_ij v_j, heads concatenated, then to_out     (to_out = Linear → GLU with attention-on-attention)

Keys and values come from ``x`` or from ``context`` (cross-attention), preceded by ``mem`` (earlier hidden states,
Transformer-XL style, projected like the others) and by ``num_mem_kv`` learned key / value vectors per head
(Memory Transformers; not projected, always visible). With a position-infused sinusoidal embedding, ``p(·)`` is
added to the query and key inputs (not to the values), the queries shifted to the end of the key sequence.

Without an option that needs the score matrix (talking heads, top-k, residual scores, a relative-position bias, or
the caller asking for the maps) the same numbers come from ``torch.nn.functional.scaled_dot_product_attention``
with the masks as an additive bias of 0 / −max_float: a masked score then equals −max_float in fp32 / bf16 exactly
as the filled one does (fp16 keeps the explicit form, whose fill it could not match).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ldm.modules.x_transformer_parts import DEFAULT_DIM_HEAD, Intermediates, max_neg_value

__all__ = ["Attention"]


def _heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    return rearrange(t, "b n (h d) -> b h n d", h=heads)


def _mix_heads(scores: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
    """Talking heads: ``out[:, g] = Σ_h scores[:, h] · mixing[h, g]`` on ``(B, H, I, J)``."""
    return torch.einsum("bhij,hg->bgij", scores, mixing)


def _key_columns(
    rows: torch.Tensor, context_mask: torch.Tensor | None, cross: bool, n_mem: int, n_keys: int
) -> torch.Tensor:
    """Which of the ``n_keys`` keys (memory first) each batch element may see: ``(B, n_keys)`` bool."""
    if cross:
        visible = context_mask if context_mask is not None else rows.new_ones(rows.shape[0], n_keys - n_mem)
    else:
        visible = rows
    if n_mem:  # earlier hidden states are never padding (the original could not combine them with a mask)
        visible = torch.cat((visible.new_ones(visible.shape[0], n_mem), visible), dim=1)
    return visible.bool()


class Attention(nn.Module):
    """Multi-head (self- or cross-) attention; ``forward`` returns ``(out (B, N, dim), Intermediates)``.

    ``Intermediates.pre_softmax_attn`` is the score matrix ``(B, heads, N, keys)`` (with the masks filled in, or
    before the mixing when talking heads or a relative-position bias transform it), ``post_softmax_attn`` the
    softmax (before dropout and the post-softmax mixing). Both are ``None`` when ``need_weights=False`` and no
    option needs them (the fused kernel then runs).
    """

    def __init__(
        self,
        dim: int,
        dim_head: int = DEFAULT_DIM_HEAD,
        heads: int = 8,
        causal: bool = False,
        mask: torch.Tensor | None = None,
        talking_heads: bool = False,
        sparse_topk: int | None = None,
        use_entmax15: bool = False,
        num_mem_kv: int = 0,
        dropout: float = 0.0,
        on_attn: bool = False,
    ) -> None:
        super().__init__()
        if use_entmax15:
            raise NotImplementedError(
                "Attention(use_entmax15=True): the α-entmax (α=1.5) normalisation needs the third-party `entmax` "
                "package, which the original module never imported (it raised here as well); leave "
                "use_entmax15=False for the softmax"
            )
        width = heads * dim_head
        self.heads, self.causal, self.mask, self.scale = heads, causal, mask, 1.0 / math.sqrt(dim_head)
        self.attn_fn, self.attn_on_attn = F.softmax, on_attn
        self.talking_heads, self.sparse_topk, self.num_mem_kv = talking_heads, sparse_topk, num_mem_kv
        # creation order = the original's, so that one seed gives the same initial weights
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, width, bias=False) for _ in "qkv")
        self.dropout = nn.Dropout(dropout)
        self._score_parameters(dim_head)
        self.to_out = nn.Sequential(nn.Linear(width, 2 * dim), nn.GLU()) if on_attn else nn.Linear(width, dim)

    def _score_parameters(self, dim_head: int) -> None:
        """Talking-heads mixings ``(heads, heads)`` and learned memory keys / values ``(heads, num_mem_kv,
        dim_head)``, all ~ N(0, 1)."""
        names = (["pre_softmax_proj", "post_softmax_proj"] if self.talking_heads else []) + (
            ["mem_k", "mem_v"] if self.num_mem_kv > 0 else []
        )
        for name in names:
            shape = (self.heads, self.heads) if name.endswith("proj") else (self.heads, self.num_mem_kv, dim_head)
            self.register_parameter(name, nn.Parameter(torch.randn(shape)))

    # ---- masks ------------------------------------------------------------------------------------------------

    def _visible(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        mask: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        cross: bool,
        n_mem: int,
    ) -> torch.Tensor | None:
        """Boolean ``(B or 1, 1, I, J)``: may query i see key j (learned memory keys included)? None: all may."""
        batch, _, n_queries, _ = q.shape
        n_keys = k.shape[-2]
        visible = None
        if mask is not None or context_mask is not None:
            rows = mask.bool() if mask is not None else q.new_ones(batch, n_queries, dtype=torch.bool)
            columns = _key_columns(rows, context_mask, cross, n_mem, n_keys - self.num_mem_kv)
            visible = rows[:, None, :, None] & columns[:, None, None, :]
            # the learned memory stays visible to every query, a padded one included (as in the original)
            visible = F.pad(visible, (self.num_mem_kv, 0), value=True)
        if self.causal:  # query i sits at key position i + (J - I): it sees keys up to there
            offset = n_keys - n_queries
            query_pos = torch.arange(n_queries, device=q.device)[:, None] + offset
            future = torch.arange(n_keys, device=q.device)[None, :] > query_pos
            visible = ~future[None, None] if visible is None else visible & ~future
        return visible

    # ---- the two evaluations ----------------------------------------------------------------------------------

    def _explicit(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        visible: torch.Tensor | None,
        prev_attn: torch.Tensor | None,
        rel_pos: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> tuple[torch.Tensor, Intermediates]:
        scores = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale  # (B, H, I, J)
        if prev_attn is not None:
            scores = scores + prev_attn
        untransformed = scores
        if self.talking_heads:
            scores = _mix_heads(scores, self.pre_softmax_proj)
        if rel_pos is not None:
            scores = rel_pos(scores)
        floor = max_neg_value(scores)
        if visible is not None:
            scores = scores.masked_fill(~visible, floor)
        if self.sparse_topk is not None and self.sparse_topk < scores.shape[-1]:
            kth_largest = scores.topk(self.sparse_topk, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth_largest, floor)
        # the original fills the masks in place: its recorded scores are the masked ones unless a mixing or a bias
        # had already replaced the tensor
        recorded = untransformed if (self.talking_heads or rel_pos is not None) else scores
        weights = self.attn_fn(scores, dim=-1)
        mixed = self.dropout(weights)
        if self.talking_heads:
            mixed = _mix_heads(mixed, self.post_softmax_proj)
        return torch.einsum("bhij,bhjd->bhid", mixed, v), Intermediates(recorded, weights)

    def _fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        bias = None
        if visible is not None:
            bias = torch.zeros(visible.shape, dtype=q.dtype, device=q.device).masked_fill(~visible, max_neg_value(q))
        p = self.dropout.p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=self.scale)

    def _needs_scores(self, n_keys: int, prev_attn: torch.Tensor | None, rel_pos: object, dtype: torch.dtype) -> bool:
        topk = self.sparse_topk is not None and self.sparse_topk < n_keys
        fill_exact = torch.finfo(dtype).max > 1e30  # an additive −max equals the fill only where |s| ≪ ulp(max)
        return self.talking_heads or topk or prev_attn is not None or rel_pos is not None or not fill_exact

    # ---- forward ----------------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        rel_pos: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sinusoidal_emb: nn.Module | None = None,
        prev_attn: torch.Tensor | None = None,
        mem: torch.Tensor | None = None,
        *,
        need_weights: bool = True,
    ) -> tuple[torch.Tensor, Intermediates]:
        """``x (B, N, dim)``, ``context (B, M, dim)``, ``mask (B, N)`` / ``context_mask (B, M)`` bool (True = keep),
        ``mem (B, L, dim)``, ``prev_attn (B, heads, N, keys)`` → ``(B, N, dim)`` and the attention maps.

        ``need_weights=False`` lets the fused kernel run when no option needs the scores (same numbers).
        """
        sources = x if context is None else context  # (B, M, dim)
        n_mem = 0 if mem is None else mem.shape[1]
        if mem is not None:
            sources = torch.cat((mem, sources), dim=1)  # (B, L + M, dim)
        query_in, key_in = x, sources
        if sinusoidal_emb is not None:
            query_in = x + sinusoidal_emb(x, offset=sources.shape[1] - x.shape[1])
            key_in = sources + sinusoidal_emb(sources)
        q = _heads_first(self.to_q(query_in), self.heads)  # (B, H, N, d)
        k = _heads_first(self.to_k(key_in), self.heads)  # (B, H, L + M, d)
        v = _heads_first(self.to_v(sources), self.heads)
        if self.num_mem_kv > 0:
            k = torch.cat((repeat(self.mem_k, "h n d -> b h n d", b=x.shape[0]), k), dim=2)
            v = torch.cat((repeat(self.mem_v, "h n d -> b h n d", b=x.shape[0]), v), dim=2)
        visible = self._visible(q, k, mask, context_mask, context is not None, n_mem)

        if need_weights or self._needs_scores(k.shape[-2], prev_attn, rel_pos, q.dtype):
            out, maps = self._explicit(q, k, v, visible, prev_attn, rel_pos)
        else:
            out, maps = self._fused(q, k, v, visible), Intermediates(None, None)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)")), maps
