"""The layer stack of ``ldm.modules.x_transformer``: ``AttentionLayers`` and its bidirectional ``Encoder``.

A stack is a sequence of layer types, ``'a'`` self-attention, ``'c'`` cross-attention to a ``context``, ``'f'``
feed-forward; every layer is ``ModuleList([norm, block, merge])`` (state-dict keys ``layers.<i>.0/1/2``) and does

    pre-norm  (default):  x ← merge(block(norm(x)), x)
    post-norm:            x ← norm(merge(block(x), x))      (no norm after the last layer)

with ``merge`` the residual sum ``out + x`` or a GRU cell (``gate_residual``: the block output is the GRU input,
``x`` its state). ``norm`` is a LayerNorm, ScaleNorm or RMSNorm, or the identity with ReZero (the attention blocks
then end in a learned gate ``g`` that starts at 0).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from ldm.modules.attention import FeedForward
from ldm.modules.x_transformer_attention import Attention
from ldm.modules.x_transformer_parts import (
    FixedPositionalEmbedding,
    GRUGating,
    LayerIntermediates,
    Residual,
    Rezero,
    RMSNorm,
    Scale,
    ScaleNorm,
    always,
    groupby_prefix_and_trim,
)

__all__ = ["AttentionLayers", "Encoder", "layer_plan"]

LAYER_TYPES = ("a", "c", "f")


def _repeating_block(cross_attend: bool, only_cross: bool, macaron: bool) -> tuple[str, ...]:
    """One transformer block: ``a f``, ``a c f`` with cross-attention, ``c f`` with only cross-attention; macaron
    puts a second feed-forward in front."""
    if cross_attend:
        block = ("c", "f") if only_cross else ("a", "c", "f")
    else:
        block = ("a", "f")
    return ("f", *block) if macaron else block


def _par_plan(block: tuple[str, ...], depth: int, par_ratio: int) -> tuple[str, ...]:
    """Sandwich-free "PAR" ordering (Mandava et al. 2020, "Pay Attention when Required").

    Of the ``L = depth · len(block)`` layers, ``G = L // par_ratio`` groups fill the first two thirds ``C = 2L // 3``:
    each group is the block's attention layers padded with feed-forwards to width ``W = (C + C // G) // G``; the
    remaining ``L − G·W`` layers are feed-forwards.
    """
    total = depth * len(block)
    if not 1 < par_ratio <= total:
        raise ValueError(f"AttentionLayers: par_ratio={par_ratio} must lie in (1, depth · block size = {total}]")
    attention_part = tuple(kind for kind in block if kind != "f")
    groups = total // par_ratio
    cut = total * 2 // 3
    width = (cut + cut // groups) // groups
    if width < len(attention_part):
        raise ValueError(
            f"AttentionLayers: par_ratio={par_ratio} leaves groups of {width} layers, fewer than the block's "
            f"{len(attention_part)} attention layers; lower par_ratio or raise depth"
        )
    group = attention_part + ("f",) * (width - len(attention_part))
    return group * groups + ("f",) * (total - width * groups)


def layer_plan(
    depth: int,
    cross_attend: bool = False,
    only_cross: bool = False,
    macaron: bool = False,
    custom_layers: Sequence[str] | None = None,
    par_ratio: int | None = None,
    sandwich_coef: int | None = None,
) -> Sequence[str]:
    """The layer types of a stack, by the first rule that applies.

    ``custom_layers`` as given; ``par_ratio`` see :func:`_par_plan`; ``sandwich_coef = s``: ``s`` attention layers,
    ``depth − s`` blocks, ``s`` feed-forwards (Press et al. 2020, "Sandwich transformer"); else ``depth`` blocks.
    """
    block = _repeating_block(cross_attend, only_cross, macaron)
    if custom_layers is not None:
        return custom_layers
    if par_ratio is not None:
        return _par_plan(block, depth, par_ratio)
    if sandwich_coef is not None:
        if not 0 < sandwich_coef <= depth:
            raise ValueError(f"AttentionLayers: sandwich_coef={sandwich_coef} must lie in [1, depth={depth}]")
        return ("a",) * sandwich_coef + block * (depth - sandwich_coef) + ("f",) * sandwich_coef
    return block * depth


class AttentionLayers(nn.Module):
    """A stack of attention / cross-attention / feed-forward layers on ``(B, N, dim)``.

    ``attn_*`` keywords go to every :class:`Attention` (``attn_dim_head``, ``attn_dropout``, ``attn_talking_heads``,
    ``attn_sparse_topk``, ``attn_num_mem_kv``, ``attn_on_attn``, ...), ``ff_*`` to every ``FeedForward``
    (``ff_mult``, ``ff_glu``, ``ff_dropout``, ``ff_dim_out``). ``residual_attn`` / ``cross_residual_attn`` add each
    self- / cross-attention layer's scores to the next one's; ``position_infused_attn`` adds sinusoidal positions to
    the queries and keys of the self-attention layers. Relative-position and rotary embeddings are not part of
    this copy (the original accepted ``rel_pos_*`` and never built them).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int = 8,
        causal: bool = False,
        cross_attend: bool = False,
        only_cross: bool = False,
        use_scalenorm: bool = False,
        use_rmsnorm: bool = False,
        use_rezero: bool = False,
        rel_pos_num_buckets: int = 32,
        rel_pos_max_distance: int = 128,
        position_infused_attn: bool = False,
        custom_layers: Sequence[str] | None = None,
        sandwich_coef: int | None = None,
        par_ratio: int | None = None,
        residual_attn: bool = False,
        cross_residual_attn: bool = False,
        macaron: bool = False,
        pre_norm: bool = True,
        gate_residual: bool = False,
        **kwargs: object,
    ) -> None:
        super().__init__()
        ff_kwargs, rest = groupby_prefix_and_trim("ff_", kwargs)
        attn_kwargs, unused = groupby_prefix_and_trim("attn_", rest)
        if unused:
            warnings.warn(f"AttentionLayers ignores {sorted(unused)} (only attn_* and ff_* keywords are passed on)",
                          stacklevel=2)
        if rel_pos_num_buckets > rel_pos_max_distance:
            raise ValueError(f"AttentionLayers: rel_pos_num_buckets={rel_pos_num_buckets} must not exceed "
                             f"rel_pos_max_distance={rel_pos_max_distance}")
        plan = layer_plan(depth, cross_attend, only_cross, macaron, custom_layers, par_ratio, sandwich_coef)
        unknown = sorted({kind for kind in plan if kind not in LAYER_TYPES})
        if unknown:
            raise ValueError(f"AttentionLayers: unknown layer types {unknown} in {list(plan)}; use 'a' (attention), "
                             "'c' (cross-attention) or 'f' (feed-forward)")

        self.dim, self.depth = dim, depth
        self.layers = nn.ModuleList()  # registered before pia_pos_emb: the state-dict order is the original's
        self.pre_norm = pre_norm
        self.residual_attn, self.cross_residual_attn = residual_attn, cross_residual_attn
        self.has_pos_emb = position_infused_attn
        self.pia_pos_emb = FixedPositionalEmbedding(dim) if position_infused_attn else None
        self.rotary_pos_emb = always(None)
        self.rel_pos = None
        self.layer_types = plan
        self.num_attn_layers = sum(kind == "a" for kind in plan)

        if use_rezero:
            make_norm = nn.Identity
        elif use_rmsnorm:
            make_norm = lambda: RMSNorm(dim)  # noqa: E731
        elif use_scalenorm:
            make_norm = lambda: ScaleNorm(dim)  # noqa: E731
        else:
            make_norm = lambda: nn.LayerNorm(dim)  # noqa: E731

        for kind in plan:
            if kind == "f":
                block = FeedForward(dim, **ff_kwargs)
                block = Scale(0.5, block) if macaron else block
            else:
                block = Attention(dim, heads=heads, **({"causal": causal} if kind == "a" else {}), **attn_kwargs)
                block = Rezero(block) if use_rezero else block
            merge = GRUGating(dim) if gate_residual else Residual()
            self.layers.append(nn.ModuleList([make_norm(), block, merge]))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        mems: Sequence[torch.Tensor] | None = None,
        return_hiddens: bool = False,
        *,
        return_attn_maps: bool | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, LayerIntermediates]:
        """``x (B, N, dim)`` → ``(B, N, dim)``; with ``return_hiddens`` also ``LayerIntermediates``: the input of
        every self-attention layer (``hiddens``, the next segment's ``mems``) and every attention layer's maps.

        ``context (B, M, dim)`` / ``context_mask (B, M)`` feed the cross-attention layers, ``mask (B, N)`` (True =
        keep) all of them, ``mems`` one ``(B, L, dim)`` memory per self-attention layer. ``return_attn_maps``
        (default: ``return_hiddens``) False skips the maps so the fused attention kernel can run.
        """
        want_maps = return_hiddens if return_attn_maps is None else return_attn_maps
        if mems is None:
            mems = [None] * self.num_attn_layers
        elif len(mems) < self.num_attn_layers:
            raise ValueError(f"AttentionLayers: {len(mems)} mems for {self.num_attn_layers} self-attention layers; "
                             "pass one (B, L, dim) memory per self-attention layer (the hiddens of the last call)")
        memories = iter(mems)
        carried = {"a": self.residual_attn, "c": self.cross_residual_attn}
        previous = {"a": None, "c": None}
        hiddens, maps = [], []
        last = len(self.layers) - 1
        for index, (kind, (norm, block, merge)) in enumerate(zip(self.layer_types, self.layers)):
            if kind == "a":
                hiddens.append(x)
            h = norm(x) if self.pre_norm else x
            if kind == "f":
                out = block(h)
            else:
                need = want_maps or carried[kind]
                if kind == "a":
                    out, layer_maps = block(h, mask=mask, sinusoidal_emb=self.pia_pos_emb, rel_pos=self.rel_pos,
                                            prev_attn=previous["a"], mem=next(memories), need_weights=need)
                else:
                    out, layer_maps = block(h, context=context, mask=mask, context_mask=context_mask,
                                            prev_attn=previous["c"], need_weights=need)
                maps.append(layer_maps)
                if carried[kind]:
                    previous[kind] = layer_maps.pre_softmax_attn
            x = merge(out, x)
            if not self.pre_norm and index != last:
                x = norm(x)
        if return_hiddens:
            return x, LayerIntermediates(hiddens=hiddens, attn_intermediates=maps)
        return x


class Encoder(AttentionLayers):
    """A bidirectional :class:`AttentionLayers` (never causal); keyword arguments only, as in the original."""

    def __init__(self, **kwargs: object) -> None:
        if "causal" in kwargs:
            raise ValueError("Encoder is bidirectional: drop `causal` (AttentionLayers(causal=True, ...) is causal)")
        super().__init__(causal=False, **kwargs)
