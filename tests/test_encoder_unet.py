"""ldm.modules.diffusionmodules.encoder_unet and the names kept for the original import paths: the classifier
half-UNet shares UNetModel's torso, its four pooling heads, float16, AttentionPool2d, the legacy names."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn as nn

from ldm.modules.diffusionmodules import openaimodel
from ldm.modules.diffusionmodules.openaimodel import (
    AttentionPool2d,
    EncoderUNetModel,
    QKVAttention,
    QKVAttentionLegacy,
    UNetModel,
)

ENCODER_UNET = dict(image_size=16, in_channels=3, model_channels=32, out_channels=7, num_res_blocks=1,
                    attention_resolutions=[2], channel_mult=(1, 2), num_head_channels=16)
POOLS = ["adaptive", "attention", "spatial", "spatial_v2"]


def _wake_head_(model: EncoderUNetModel) -> EncoderUNetModel:
    """Give the zero-initialised convs (the adaptive head's, every block's last) random weights."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)) and not module.weight.any():
                module.weight.normal_(0.0, 0.05)
    return model


@pytest.mark.parametrize("pool", POOLS)
def test_encoder_unet_heads(pool: str) -> None:
    torch.manual_seed(0)
    model = EncoderUNetModel(**ENCODER_UNET, pool=pool).eval()
    keys = model.state_dict()
    assert "input_blocks.3.1.qkv.weight" in keys and "middle_block.1.proj_out.weight" in keys
    assert "output_blocks.0.0.in_layers.0.weight" not in keys
    assert model._feature_size == 32 + 32 + 32 + 64 + 64  # stem, 3 input blocks, middle block
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 500])
    with torch.no_grad():
        out = model(x, t)
    assert out.shape == (2, 7)
    if pool == "adaptive":  # the head's last conv starts at zero
        assert torch.equal(out, torch.zeros(2, 7))
    if pool == "attention":
        assert model.out[2].positional_embedding.shape == (64, 8 * 8 + 1)  # image_size // 2 = 8
    if pool.startswith("spatial"):
        assert model.out[0].in_features == model._feature_size


def test_encoder_unet_is_the_unet_torso() -> None:
    # the same settings and seed give the UNet's input and middle blocks, parameter for parameter, and the
    # same middle-block activations
    settings = {**ENCODER_UNET, "resblock_updown": True, "use_scale_shift_norm": True}
    torch.manual_seed(0)
    encoder = _wake_head_(EncoderUNetModel(**settings)).eval()
    torch.manual_seed(0)
    unet = UNetModel(**settings).eval()
    torso = {k: v for k, v in unet.state_dict().items() if k.startswith(("time_embed.", "input_blocks.", "middle_"))}
    encoder_torso = {k: v for k, v in encoder.state_dict().items() if not k.startswith("out.")}
    assert torso.keys() == encoder_torso.keys()
    unet.load_state_dict(encoder_torso, strict=False)
    middles = []
    for model in (encoder, unet):
        model.middle_block.register_forward_hook(lambda _m, _i, out: middles.append(out))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 500])
    with torch.no_grad():
        encoder(x, t), unet(x, t)
    torch.testing.assert_close(middles[0], middles[1], rtol=0, atol=0)


@pytest.mark.parametrize("pool", POOLS)
def test_encoder_unet_fp16_torso(pool: str) -> None:
    torch.manual_seed(0)
    reference = _wake_head_(EncoderUNetModel(**ENCODER_UNET, pool=pool)).eval()
    model = EncoderUNetModel(**ENCODER_UNET, pool=pool, use_fp16=True).eval()
    model.load_state_dict(reference.state_dict())
    assert model.dtype == torch.float16
    assert model.input_blocks[0][0].weight.dtype == model.middle_block[1].qkv.weight.dtype == torch.float16
    assert model.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32  # group norms stay float32
    assert {p.dtype for p in model.out.parameters()} == {torch.float32}
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 500])
    with torch.no_grad():
        expected, out = reference(x, t), model(x, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-2 * expected.abs().max().item())
    model.convert_to_fp32()
    assert model.dtype == torch.float32 and {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(pool="max"), (NotImplementedError, ValueError), "no 'max' pooling"),
        (dict(pool="attention", num_head_channels=-1), (ValueError, AssertionError), "needs num_head_channels"),
    ],
    ids=["unknown-pool", "attention-pool-heads"],
)
def test_encoder_unet_errors(kwargs, error, message) -> None:
    with pytest.raises(error[0], match=message) as caught:
        EncoderUNetModel(**{**ENCODER_UNET, **kwargs})
    assert isinstance(caught.value, error[1])


def test_attention_pool_2d_pools_through_the_mean_token() -> None:
    torch.manual_seed(0)
    pool = AttentionPool2d(spacial_dim=3, embed_dim=16, num_heads_channels=8, output_dim=5)
    assert pool.num_heads == 2 and pool.positional_embedding.shape == (16, 10)
    x = torch.randn(2, 16, 3, 3)
    tokens = torch.cat([x.flatten(2).mean(-1, keepdim=True), x.flatten(2)], dim=-1) + pool.positional_embedding
    q, k, v = pool.qkv_proj(tokens).chunk(3, dim=1)  # "new" order: q, k, v first, then heads
    heads = lambda t: t.reshape(2 * 2, 8, 10)
    weights = torch.softmax(torch.einsum("bct,bcs->bts", heads(q), heads(k)) / math.sqrt(8), dim=-1)
    attended = torch.einsum("bts,bcs->bct", weights, heads(v)).reshape(2, 16, 10)
    torch.testing.assert_close(pool(x), pool.c_proj(attended)[:, :, 0], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------
# Names kept for the original import paths
# --------------------------------------------------------------------------------------------------------


def test_every_public_name_imports_from_openaimodel() -> None:
    homes = {
        "ldm.legacy.unet_extras": {"TransposedUpsample", "count_flops_attn"},
        "ldm.modules.diffusionmodules.encoder_unet": {"EncoderUNetModel"},
        "ldm.modules.diffusionmodules.openaimodel": {"UNetModel", "Timestep"},
    }
    for name in openaimodel.__all__:
        home = next((m for m, names in homes.items() if name in names), "ldm.modules.diffusionmodules.unet_blocks")
        assert getattr(openaimodel, name) is getattr(importlib.import_module(home), name), name


def test_transposed_upsample_is_a_stride_2_transposed_conv() -> None:
    from ldm.modules.diffusionmodules.openaimodel import TransposedUpsample

    up = TransposedUpsample(4, out_channels=6)
    x = torch.randn(1, 4, 5, 5)
    out = up(x)
    assert out.shape == (1, 6, 13, 13)  # 2·5 + 5 − 2, no padding
    torch.testing.assert_close(out, torch.nn.functional.conv_transpose2d(x, up.up.weight, up.up.bias, stride=2))


def test_count_flops_adds_the_two_attention_matmuls() -> None:
    from ldm.modules.diffusionmodules.openaimodel import count_flops_attn

    counter = nn.Module()
    counter.total_ops = torch.zeros(1, dtype=torch.float64)
    y = torch.zeros(2, 8, 4, 5)  # B=2, C=8, T=20
    QKVAttention.count_flops(counter, None, (y,))
    QKVAttentionLegacy.count_flops(counter, None, (y,))
    count_flops_attn(counter, None, (y,))
    assert counter.total_ops.item() == 3 * (2 * 2 * 20**2 * 8)
