"""ldm.modules.attention_slicing and the ``attention`` kernel: sliced attention equals the unsliced one, the
switch reaches every attention layer of a UNet and an autoencoder, float16 inputs are computed in float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm.modules.attention import CrossAttention, SpatialTransformer, attention
from ldm.modules.attention_slicing import set_attention_slicing
from ldm.modules.diffusionmodules.model import AttnBlock, Decoder
from tests.helpers import state_dict_manifest

TINY_DDCONFIG = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                     num_res_blocks=1, attn_resolutions=[16], dropout=0.0)


@pytest.mark.parametrize("slice_size", [1, 5, 16, 37, 1000])
def test_sliced_attention_equals_unsliced(slice_size: int) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=gen) for n in (37, 23, 23))
    mask = torch.zeros(2, 1, 1, 23).masked_fill(torch.rand(2, 1, 1, 23, generator=gen) > 0.5, -1e9)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    torch.testing.assert_close(attention(q, k, v, attn_mask=mask, scale=0.3, slice_size=slice_size), expected,
                               rtol=0, atol=1e-6)


def test_cross_attention_sliced_with_mask_equals_unsliced() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=16, context_dim=12, heads=2, dim_head=8).eval()
    x, context, mask = torch.randn(2, 50, 16), torch.randn(2, 7, 12), torch.rand(2, 7) > 0.3
    with torch.no_grad():
        expected = attn(x, context, mask=mask)
        assert set_attention_slicing(attn, 8) == 1
        assert attn.slice_size == 8
        torch.testing.assert_close(attn(x, context, mask=mask), expected, rtol=0, atol=1e-6)


def test_slicing_reaches_every_attention_and_keeps_decoder_output() -> None:
    torch.manual_seed(0)
    decoder = Decoder(**TINY_DDCONFIG).eval()
    transformer = SpatialTransformer(32, n_heads=2, d_head=16, depth=2, context_dim=12)
    model = torch.nn.ModuleDict({"decoder": decoder, "transformer": transformer})
    attn_blocks = [m for m in decoder.modules() if isinstance(m, AttnBlock)]
    assert len(attn_blocks) == 3  # the middle one and one per ResnetBlock at 16x16
    keys_before = state_dict_manifest(model)
    z = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        expected = decoder(z)
        assert set_attention_slicing(model, 100) == 3 + 2 * 2  # 2 blocks × (attn1, attn2); 256 = 100 + 100 + 56
        assert all(m.slice_size == 100 for m in model.modules() if isinstance(m, (AttnBlock, CrossAttention)))
        torch.testing.assert_close(decoder(z), expected, rtol=0, atol=1e-5)
        set_attention_slicing(model, None)
        assert all(m.slice_size is None for m in model.modules() if isinstance(m, (AttnBlock, CrossAttention)))
    assert state_dict_manifest(model) == keys_before


def test_slicing_is_off_by_default_and_rejects_non_positive_sizes() -> None:
    assert CrossAttention(8, heads=1, dim_head=8).slice_size is None
    assert AttnBlock(32).slice_size is None
    with pytest.raises(ValueError, match="slice_size=0"):
        set_attention_slicing(AttnBlock(32), 0)


def test_float16_attention_runs_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """q·kᵀ = 40·40·64 = 102400 overflows float16 (max 65504); the kernel must see float32 inputs."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append(q.dtype)
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q = torch.full((1, 1, 4, 64), 40.0, dtype=torch.float16)
    v = torch.randn(1, 1, 4, 64).half()
    out = attention(q, q, v, scale=1.0, slice_size=2)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert seen == [torch.float32, torch.float32]
    torch.testing.assert_close(out, v.float().mean(dim=2, keepdim=True).expand_as(out).half(), rtol=0, atol=1e-3)


def test_bfloat16_attention_stays_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **kw: seen.append(q.dtype) or sdpa(
        q, k, v, **kw))
    torch.manual_seed(0)
    block = AttnBlock(32).to(torch.bfloat16).eval()
    x = torch.randn(1, 32, 4, 4, dtype=torch.bfloat16)
    with torch.no_grad():
        assert block(x).dtype == torch.bfloat16
    assert seen == [torch.bfloat16]
