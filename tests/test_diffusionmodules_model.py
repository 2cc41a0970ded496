"""Autoencoder layers and networks: attention against the plain formula, resampling, ResNet shortcuts, the level
table, input checks, and the other public names of the ``model`` module path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm.modules.diffusionmodules.encoder_decoder import Level, decoder_levels, encoder_levels
from ldm.modules.diffusionmodules.model import (
    AttnBlock,
    Decoder,
    Downsample,
    Encoder,
    LinAttnBlock,
    MemoryEfficientAttnBlock,
    MemoryEfficientCrossAttentionWrapper,
    Normalize,
    ResnetBlock,
    Upsample,
    make_attn,
    nonlinearity,
)

TINY_DDCONFIG = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
                     num_res_blocks=1, attn_resolutions=[8], dropout=0.0)


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return module


def test_normalize_and_swish() -> None:
    norm = Normalize(64)
    assert (norm.num_groups, norm.eps, norm.affine) == (32, 1e-6, True)
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(nonlinearity(x), x * torch.sigmoid(x))


def test_attn_block_sdpa_equals_plain_softmax_attention() -> None:
    torch.manual_seed(0)
    block = _randomize(AttnBlock(32)).eval()
    x = torch.randn(2, 32, 5, 6)
    h = block.norm(x)
    q, k, v = (layer(h).flatten(2) for layer in (block.q, block.k, block.v))  # (B, C, N)
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / 32**0.5, dim=-1)  # (B, Nq, Nk)
    attended = torch.einsum("bij,bcj->bci", weights, v).reshape(2, 32, 5, 6)
    expected = x + block.proj_out(attended)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    assert sorted(block.state_dict()) == sorted(
        f"{n}.{p}" for n in ("norm", "q", "k", "v", "proj_out") for p in ("weight", "bias")
    )


def test_linear_attention_matches_its_formula() -> None:
    torch.manual_seed(0)
    block = _randomize(LinAttnBlock(8))
    x = torch.randn(2, 8, 3, 4)
    q, k, v = block.to_qkv(x).flatten(2).chunk(3, dim=1)  # (B, C, N) each
    out = v @ k.softmax(dim=-1).transpose(1, 2) @ q  # (B, C, N): Σ_d Σ_n' v[e, n'] softmax(k)[d, n'] q[d, n]
    expected = block.to_out(out.reshape(2, 8, 3, 4))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    assert sorted(block.state_dict()) == ["to_out.bias", "to_out.weight", "to_qkv.weight"]


def test_make_attn_types() -> None:
    assert isinstance(make_attn(32, "vanilla"), AttnBlock)
    assert isinstance(make_attn(32, "linear"), LinAttnBlock)
    x = torch.randn(1, 32, 2, 2)
    assert torch.equal(make_attn(32, "none")(x), x)
    with pytest.raises(ValueError, match="attn_type='softmax-xformers'"):
        make_attn(32, "softmax-xformers")
    assert isinstance(make_attn(32, "vanilla-xformers"), MemoryEfficientAttnBlock)
    with pytest.raises(ValueError, match="attn_kwargs"):
        make_attn(32, "vanilla", attn_kwargs={"heads": 2})


def test_memory_efficient_cross_attention_wrapper_is_a_residual_over_positions() -> None:
    """``y = x + CrossAttention(x as (B, H·W, C), context)`` back in the (B, C, H, W) layout (SD 2.x names)."""
    block = _randomize(make_attn(8, "memory-efficient-cross-attn", attn_kwargs={"context_dim": 6, "heads": 2,
                                                                                   "dim_head": 4}))
    assert isinstance(block, MemoryEfficientCrossAttentionWrapper)
    x, context = torch.randn(2, 8, 3, 4), torch.randn(2, 5, 6)
    tokens = x.flatten(2).transpose(1, 2)  # (B, H·W, C)
    q = block.to_q(tokens).reshape(2, 12, 2, 4).transpose(1, 2)
    k = block.to_k(context).reshape(2, 5, 2, 4).transpose(1, 2)
    v = block.to_v(context).reshape(2, 5, 2, 4).transpose(1, 2)
    weights = (q @ k.transpose(-1, -2) / 2.0).softmax(dim=-1)  # scale 1/√dim_head
    mixed = block.to_out((weights @ v).transpose(1, 2).reshape(2, 12, 8))  # (B, H·W, C)
    expected = x + mixed.transpose(1, 2).reshape(2, 8, 3, 4)
    torch.testing.assert_close(block(x, context=context), expected, atol=1e-5, rtol=1e-5)


def test_downsample_pads_right_and_bottom_only() -> None:
    torch.manual_seed(0)
    down = _randomize(Downsample(4, with_conv=True))
    x = torch.randn(1, 4, 6, 6)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
    out = down(x)
    assert out.shape == (1, 4, 3, 3)
    torch.testing.assert_close(out, expected)
    pooled = Downsample(4, with_conv=False)(x)
    torch.testing.assert_close(pooled[0, :, 0, 0], x[0, :, :2, :2].mean(dim=(1, 2)))


def test_upsample_is_nearest_then_conv() -> None:
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    out = Upsample(1, with_conv=False)(x)
    assert torch.equal(out[0, 0], torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]))
    up = _randomize(Upsample(1, with_conv=True))
    torch.testing.assert_close(up(x), up.conv(out))


def test_resnet_block_shortcuts_and_timestep_projection() -> None:
    torch.manual_seed(0)
    same = _randomize(ResnetBlock(in_channels=32, dropout=0.0, temb_channels=0))
    assert not hasattr(same, "temb_proj") and not hasattr(same, "nin_shortcut")
    x = torch.randn(1, 32, 4, 4)
    h = same.conv1(nonlinearity(same.norm1(x)))
    h = same.conv2(nonlinearity(same.norm2(h)))
    torch.testing.assert_close(same(x, None), x + h)

    assert same.shortcut is None
    nin = _randomize(ResnetBlock(in_channels=32, out_channels=64, dropout=0.0, temb_channels=0))
    conv = ResnetBlock(in_channels=32, out_channels=64, conv_shortcut=True, dropout=0.0, temb_channels=0)
    assert nin.nin_shortcut.kernel_size == (1, 1) and conv.conv_shortcut.kernel_size == (3, 3)
    assert nin.shortcut is nin.nin_shortcut and conv.shortcut is conv.conv_shortcut
    assert not hasattr(nin, "conv_shortcut") and not hasattr(conv, "nin_shortcut")
    h = nin.conv2(nonlinearity(nin.norm2(nin.conv1(nonlinearity(nin.norm1(x))))))
    torch.testing.assert_close(nin(x, None), nin.nin_shortcut(x) + h)

    with_temb = _randomize(ResnetBlock(in_channels=32, dropout=0.0, temb_channels=16))
    temb = torch.randn(1, 16)
    assert not torch.allclose(with_temb(x, temb), with_temb(x, None))


def test_encoder_decoder_shapes_and_options() -> None:
    encoder, decoder = Encoder(**TINY_DDCONFIG), Decoder(**TINY_DDCONFIG)
    x = torch.randn(2, 3, 32, 32)
    moments = encoder(x)
    assert moments.shape == (2, 8, 8, 8)
    assert decoder(moments[:, :4]).shape == (2, 3, 32, 32)
    assert decoder.z_shape == (1, 4, 8, 8)
    # attention sits at resolution 8: the encoder's last level and both middles
    assert len(encoder.down[2].attn) == 1 and len(encoder.down[0].attn) == 0
    assert len(decoder.up[2].attn) == 2 and len(decoder.up[1].attn) == 0

    assert Encoder(**{**TINY_DDCONFIG, "double_z": False})(x).shape == (2, 4, 8, 8)
    pre_end = Decoder(**{**TINY_DDCONFIG, "give_pre_end": True})(moments[:, :4])
    assert pre_end.shape == (2, 32, 32, 32)
    tanh = Decoder(**{**TINY_DDCONFIG, "tanh_out": True})
    _randomize(tanh)
    assert tanh(moments[:, :4]).abs().max() <= 1.0
    linear = Encoder(**{**TINY_DDCONFIG, "use_linear_attn": True})
    assert isinstance(linear.mid.attn_1, LinAttnBlock)
    assert isinstance(Encoder(**{**TINY_DDCONFIG, "attn_type": "none"}).mid.attn_1, torch.nn.Identity)


def test_level_tables_of_the_sd_first_stage() -> None:
    """kl-f8 (ch 128, ch_mult 1,2,4,4, 2 blocks, 256 px, no attention in the levels): the widths and sides."""
    args = dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, resolution=256, attn_resolutions=())
    assert encoder_levels(**args) == [
        Level(128, 128, 256, 2, False, True), Level(128, 256, 128, 2, False, True),
        Level(256, 512, 64, 2, False, True), Level(512, 512, 32, 2, False, False),
    ]
    assert decoder_levels(**args) == [
        Level(512, 512, 32, 3, False, True), Level(512, 512, 64, 3, False, True),
        Level(512, 256, 128, 3, False, True), Level(256, 128, 256, 3, False, False),
    ]


def test_decoder_level_sides_count_up_from_the_latent_side() -> None:
    """A resolution not divisible by the factor: the encoder floors at each halving (34, 17, 8), the decoder
    doubles the floored latent side (8, 16, 32), so attention at side 17 is the encoder's alone and at side 16
    the decoder's alone."""
    args = dict(ch=8, ch_mult=(1, 1, 1), num_res_blocks=1, resolution=34, attn_resolutions=(17,))
    assert [level.size for level in encoder_levels(**args)] == [34, 17, 8]
    assert [level.size for level in decoder_levels(**args)] == [8, 16, 32]
    for sides, encoder_attn, decoder_attn in (([17], [0, 1, 0], [0, 0, 0]), ([16], [0, 0, 0], [0, 2, 0])):
        ddconfig = dict(TINY_DDCONFIG, resolution=34, attn_resolutions=sides)
        assert [len(level.attn) for level in Encoder(**ddconfig).down] == encoder_attn
        assert [len(level.attn) for level in Decoder(**ddconfig).up] == decoder_attn


def test_state_dict_layout_of_a_three_level_autoencoder() -> None:
    encoder, decoder = Encoder(**TINY_DDCONFIG), Decoder(**TINY_DDCONFIG)
    enc_keys = {key.rsplit(".", 1)[0] for key in encoder.state_dict()}
    dec_keys = {key.rsplit(".", 1)[0] for key in decoder.state_dict()}
    assert {"down.0.downsample.conv", "down.1.downsample.conv", "down.1.block.0.nin_shortcut",
            "down.2.attn.0.proj_out", "mid.attn_1.q", "conv_out"} <= enc_keys
    assert not any(key.startswith("down.2.downsample") for key in enc_keys)
    assert {"up.2.upsample.conv", "up.1.upsample.conv", "up.0.block.0.nin_shortcut", "up.2.block.1.conv2",
            "up.2.attn.1.k", "mid.block_2.norm2"} <= dec_keys
    assert not any(key.startswith("up.0.upsample") for key in dec_keys)
    assert decoder.up[0].block[0].in_channels == 64 and decoder.up[0].block[0].out_channels == 32
    assert (encoder.num_resolutions, encoder.num_res_blocks, encoder.in_ch_mult) == (3, 1, (1, 1, 2, 2))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 30, 32), r"height 30 and width 32 must be divisible by the encoder's downsampling factor 4"),
        ((1, 3, 32, 33), r"divisible by the encoder's downsampling factor 4.*resize or crop"),
        ((1, 4, 32, 32), r"expects images of shape \(B, 3, H, W\), got \(1, 4, 32, 32\)"),
        ((3, 32, 32), r"expects images of shape \(B, 3, H, W\), got \(3, 32, 32\)"),
    ],
)
def test_encoder_rejects_bad_image_shapes(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Encoder(**TINY_DDCONFIG)(torch.zeros(shape))


# ---- the original module's other public names: Model, get_timestep_embedding, rescalers ----------------------
