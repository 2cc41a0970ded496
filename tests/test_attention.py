"""ldm.modules.attention: SDPA attention against the plain softmax formula, no (tokens × tokens) tensors,
transformer-block checkpointing, key names of the original."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.attention import (
    GEGLU,
    BasicTransformerBlock,
    CrossAttention,
    FeedForward,
    LinearAttention,
    SpatialTransformer,
)
from tests.helpers import RecordShapes


def reference_attention(attn: CrossAttention, x, context=None, mask=None):
    """The original's formula: einsum similarities · scale, masked_fill(-max), softmax, einsum with V."""
    context = x if context is None else context
    h = attn.heads
    q, k, v = (
        rearrange(t, "b n (h d) -> (b h) n d", h=h) for t in (attn.to_q(x), attn.to_k(context), attn.to_v(context))
    )
    sim = torch.einsum("bid,bjd->bij", q, k) * attn.scale
    if mask is not None:
        keep = mask.repeat_interleave(h, dim=0)[:, None, :]
        sim = sim.masked_fill(~keep, -torch.finfo(sim.dtype).max)
    out = torch.einsum("bij,bjd->bid", sim.softmax(dim=-1), v)
    return attn.to_out(rearrange(out, "(b h) n d -> b n (h d)", h=h))


@pytest.fixture
def cross_attention() -> CrossAttention:
    torch.manual_seed(0)
    return CrossAttention(query_dim=16, context_dim=12, heads=2, dim_head=8).eval()


def test_cross_attention_keys_match_original():
    keys = set(CrossAttention(16, 12, heads=2, dim_head=8).state_dict())
    assert keys == {"to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"}


def test_cross_attention_equals_softmax_formula(cross_attention):
    x, context = torch.randn(2, 37, 16), torch.randn(2, 23, 12)
    with torch.no_grad():
        torch.testing.assert_close(cross_attention(x, context), reference_attention(cross_attention, x, context),
                                   rtol=1e-5, atol=1e-5)


def test_self_attention_equals_softmax_formula():
    torch.manual_seed(1)
    attn = CrossAttention(query_dim=16, heads=4, dim_head=4).eval()
    x = torch.randn(3, 19, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), reference_attention(attn, x), rtol=1e-5, atol=1e-5)


def test_mask_matches_original_including_fully_masked_rows(cross_attention):
    x, context = torch.randn(2, 37, 16), torch.randn(2, 23, 12)
    mask = torch.rand(2, 23) > 0.4
    mask[1] = False  # the original attends uniformly when every key is masked
    with torch.no_grad():
        out = cross_attention(x, context, mask=mask)
        ref = reference_attention(cross_attention, x, context, mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_cross_attention_builds_no_token_by_token_tensor(cross_attention):
    x, context = torch.randn(2, 37, 16, requires_grad=True), torch.randn(2, 23, 12)
    mask = torch.rand(2, 23) > 0.4
    with RecordShapes() as rec:
        cross_attention(x, context, mask=mask).sum().backward()
    assert any("scaled_dot_product" in name for name, _ in rec.ops)
    assert rec.square_tensors(37, 23) == []


def test_geglu_and_feedforward_formulas():
    torch.manual_seed(0)
    geglu = GEGLU(8, 6)
    x = torch.randn(4, 8)
    a, g = geglu.proj(x).split(6, dim=-1)
    torch.testing.assert_close(geglu(x), a * F.gelu(g))

    ff = FeedForward(8, dim_out=5, mult=2, glu=False).eval()
    assert set(ff.state_dict()) == {"net.0.0.weight", "net.0.0.bias", "net.2.weight", "net.2.bias"}
    torch.testing.assert_close(ff(x), ff.net[2](F.gelu(ff.net[0][0](x))))
    gated = FeedForward(8, glu=True)
    assert gated.net[0].proj.weight.shape == (2 * 32, 8)


def test_linear_attention_formula():
    from ldm.legacy import attention as legacy

    assert LinearAttention is legacy.LinearAttention  # the original import path re-exports the legacy class
    torch.manual_seed(0)
    la = LinearAttention(dim=8, heads=2, dim_head=4)
    x = torch.randn(2, 8, 5, 3)
    q, k, v = la.to_qkv(x).reshape(2, 3, 2, 4, 15).unbind(1)  # (B, heads, d, N) each
    k = k.softmax(dim=-1)
    out = (k @ v.transpose(-1, -2)).transpose(-1, -2) @ q  # (B, heads, e, N)
    torch.testing.assert_close(la(x), la.to_out(out.reshape(2, 8, 5, 3)))


def test_transformer_block_checkpointing_recomputes_with_equal_grads():
    torch.manual_seed(0)
    block = BasicTransformerBlock(16, n_heads=2, d_head=8, context_dim=12, checkpoint=True)
    plain = BasicTransformerBlock(16, n_heads=2, d_head=8, context_dim=12, checkpoint=False)
    plain.load_state_dict(block.state_dict())
    x, context = torch.randn(2, 9, 16), torch.randn(2, 5, 12)
    calls = []
    block.attn1.register_forward_hook(lambda *_: calls.append("attn1"))

    out = block(x, context)
    assert calls == ["attn1"]
    out.square().sum().backward()
    assert calls == ["attn1", "attn1"]  # recomputed during backward

    ref = plain(x, context)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    for (name, p), q in zip(block.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6, msg=name)


def test_spatial_transformer_structure_and_residual():
    torch.manual_seed(0)
    st = SpatialTransformer(32, n_heads=2, d_head=8, depth=2, context_dim=12).eval()
    assert st.norm.eps == 1e-6 and st.norm.num_groups == 32
    assert st.proj_in.weight.shape == (16, 32, 1, 1) and st.proj_out.weight.shape == (32, 16, 1, 1)
    assert not st.proj_out.weight.any() and not st.proj_out.bias.any()
    assert len(st.transformer_blocks) == 2 and all(b.checkpoint for b in st.transformer_blocks)
    x, context = torch.randn(2, 32, 3, 5), torch.randn(2, 7, 12)
    with torch.no_grad():
        torch.testing.assert_close(st(x, context), x)  # zero-initialised proj_out: identity at init
        torch.nn.init.normal_(st.proj_out.weight)
        h = rearrange(st.proj_in(st.norm(x)), "b c h w -> b (h w) c")
        for block in st.transformer_blocks:
            h = block(h, context)
        expected = st.proj_out(rearrange(h, "b (h w) c -> b c h w", h=3)) + x
        torch.testing.assert_close(st(x, context), expected)


def test_the_original_module_helpers() -> None:
    from ldm.modules.attention import Normalize, default, exists, init_, max_neg_value, uniq, zero_module

    assert list(uniq([3, 1, 3, 2, 1])) == [3, 1, 2]
    assert max_neg_value(torch.zeros(1, dtype=torch.float16)) == -65504.0
    assert exists(0) and not exists(None) and default(None, lambda: 5) == 5
    torch.manual_seed(0)
    w = init_(torch.empty(64, 16))
    assert w.abs().max() <= 0.25 and w.abs().max() > 0.2
    norm = Normalize(64)
    assert (norm.num_groups, norm.eps, norm.affine) == (32, 1e-6, True)
    assert all((p == 0).all() for p in zero_module(nn.Linear(3, 3)).parameters())


def test_spatial_self_attention_matches_the_softmax_formula() -> None:
    from ldm.modules.attention import SpatialSelfAttention

    torch.manual_seed(0)
    attn = SpatialSelfAttention(32)
    x = torch.randn(2, 32, 4, 5)
    h = attn.norm(x)
    q, k, v = (layer(h).flatten(2) for layer in (attn.q, attn.k, attn.v))  # (B, C, HW)
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * 32**-0.5, dim=2)
    expected = x + attn.proj_out(torch.einsum("bcj,bij->bci", v, weights).reshape(2, 32, 4, 5))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)
    names = ("norm", "q", "k", "v", "proj_out")
    assert list(attn.state_dict()) == [f"{n}.{p}" for n in names for p in ("weight", "bias")]
