"""The x-transformers helpers the original ``ldm.modules.x_transformer`` exposed, imported from that path."""

from __future__ import annotations

import math

import torch

from ldm.modules.x_transformer import (
    FixedPositionalEmbedding,
    GRUGating,
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
    groupby_prefix_and_trim,
    max_neg_value,
    not_equals,
    pick_and_pop,
)


def test_predicates_and_defaults():
    assert exists(0) and not exists(None)
    assert default(None, 3) == 3 and default(5, 3) == 5 and default(None, lambda: 7) == 7
    assert default(None, int) is int  # only plain functions are called, as in the original
    assert always(4)(1, x=2) == 4
    assert equals(2)(2) and not equals(2)(3) and not_equals(2)(3)
    assert max_neg_value(torch.zeros(1, dtype=torch.float16)) == -65504.0


def test_keyword_grouping():
    kwargs = {"attn_dropout": 0.1, "attn_heads": 8, "ff_mult": 4}
    assert group_by_key_prefix("attn_", kwargs) == ({"attn_dropout": 0.1, "attn_heads": 8}, {"ff_mult": 4})
    assert groupby_prefix_and_trim("attn_", kwargs) == ({"dropout": 0.1, "heads": 8}, {"ff_mult": 4})
    d = {"a": 1, "b": 2, "c": 3}
    assert pick_and_pop(["c", "a"], d) == {"c": 3, "a": 1} and d == {"b": 2}
    assert LayerIntermediates(hiddens=[1], attn_intermediates=[]).hiddens == [1]


def test_sinusoidal_positions_closed_form():
    emb = FixedPositionalEmbedding(4)(torch.zeros(2, 3, 4), offset=1)
    assert emb.shape == (1, 3, 4)
    p, w = 2.0 + 1, 10000 ** (-2 / 4)  # position 2 with offset 1; the second frequency
    torch.testing.assert_close(emb[0, 2], torch.tensor([math.sin(p), math.sin(p * w), math.cos(p), math.cos(p * w)]))


def test_norms_residual_and_gates():
    x = torch.randn(2, 3, 8)
    unit = x / x.norm(dim=-1, keepdim=True) * math.sqrt(8)
    torch.testing.assert_close(ScaleNorm(8)(x), unit)
    rms = RMSNorm(8)
    rms.g.data = torch.arange(8.0)
    torch.testing.assert_close(rms(x), unit * torch.arange(8.0))
    assert torch.equal(Residual()(x, x), 2 * x)
    fn = lambda x: (x + 1, "kept")  # noqa: E731
    out, kept = Scale(0.5, fn)(x)
    assert torch.equal(out, (x + 1) * 0.5) and kept == "kept"
    assert torch.equal(Scale(0.5, lambda x: x + 1)(x), (x + 1) * 0.5)  # a tensor output (the macaron feed-forward)
    zero, _ = Rezero(fn)(x)
    assert torch.equal(zero, torch.zeros_like(x))
    gating, state = GRUGating(8), torch.randn(2, 3, 8)
    gated = gating(x, state)
    torch.testing.assert_close(gated[1, 2], gating.gru(x[1, 2][None], state[1, 2][None])[0])
