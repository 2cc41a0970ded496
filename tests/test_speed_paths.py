"""The speed paths compute the original numbers: 1x1 convs as matrix products in SpatialTransformer, memory-format
preservation (no channels-last leak into NCHW models), the channels-last UNet, prepacked convs (and the fused
upsampling convs, equal within float rounding), the fused swish."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.model import Upsample as DecoderUpsample
from ldm.modules.diffusionmodules.model import nonlinearity
from ldm.modules.diffusionmodules.openaimodel import UNetModel, Upsample
from ldm.modules.diffusionmodules.prepack import PackedConv2d, PackedUpsampleConv, prepack_convolutions


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module.eval()


def _original_spatial_transformer(st: SpatialTransformer, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The original formulation: 1x1 conv in, rearrange, blocks, rearrange, 1x1 conv out, residual."""
    h, w = x.shape[-2:]
    tokens = rearrange(st.proj_in(st.norm(x)), "b c h w -> b (h w) c")
    for block in st.transformer_blocks:
        tokens = block(tokens, context=context)
    return st.proj_out(rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w)) + x


@pytest.fixture(scope="module")
def spatial_transformer() -> SpatialTransformer:
    return _randomize(SpatialTransformer(64, n_heads=2, d_head=32, context_dim=16), 0)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_spatial_transformer_equals_conv_formulation_and_keeps_layout(
    spatial_transformer: SpatialTransformer, memory_format: torch.memory_format
) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 64, 6, 5, generator=gen).contiguous(memory_format=memory_format)
    context = torch.randn(2, 7, 16, generator=gen)
    with torch.no_grad():
        out = spatial_transformer(x, context)
        ref = _original_spatial_transformer(spatial_transformer, x.contiguous(), context)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out.is_contiguous(memory_format=memory_format)


def _tiny_unet() -> UNetModel:
    torch.manual_seed(0)
    unet = UNetModel(
        image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
        num_res_blocks=1, channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True, context_dim=16,
    )
    return _randomize(unet, 2)


def test_nchw_unet_stays_nchw_through_every_block() -> None:
    """A channels-last view leaking out of an attention layer makes later convs re-layout their weights."""
    unet = _tiny_unet()
    layouts = []
    for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks]:
        block.register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous()))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        unet(torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([1, 500]), torch.randn(2, 5, 16, generator=gen))
    assert layouts and all(layouts)


def test_channels_last_unet_equals_nchw_unet() -> None:
    unet = _tiny_unet()
    gen = torch.Generator().manual_seed(4)
    x, t, context = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([3, 900]), torch.randn(2, 5, 16, generator=gen)
    with torch.no_grad():
        ref = unet(x, t, context)
        unet.to(memory_format=torch.channels_last)
        out = unet(x.contiguous(memory_format=torch.channels_last), t, context)
    assert ref.abs().mean() > 1e-2
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_swish_is_x_sigmoid_x_within_one_ulp() -> None:
    x = torch.linspace(-30, 30, 10001)
    torch.testing.assert_close(nonlinearity(x), x * torch.sigmoid(x), atol=1e-6, rtol=2.5e-7)
    assert torch.equal(nonlinearity(x), F.silu(x))


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@needs_onednn
def test_prepacked_unet_gives_the_channels_last_numbers_and_refuses_gradients() -> None:
    """Equal to the channels-last numbers within float rounding (the fused upsampling convs sum in another order)."""
    unet = _tiny_unet()
    gen = torch.Generator().manual_seed(5)
    x, t, context = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([3, 900]), torch.randn(2, 5, 16, generator=gen)
    n_params = sum(p.numel() for p in unet.parameters())
    with torch.no_grad():
        ref = unet(x, t, context)
        unet.to(memory_format=torch.channels_last)
        ref_last = unet(x, t, context)
        prepack_convolutions(unet, skip=(SpatialTransformer,))
        out = unet(x, t, context)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_last, atol=1e-6, rtol=1e-6)
    assert not any(isinstance(m, Upsample) for m in unet.modules())
    assert sum(isinstance(m, PackedUpsampleConv) for m in unet.modules()) == 1
    in_transformers = {id(m) for st in unet.modules() if isinstance(st, SpatialTransformer) for m in st.modules()}
    assert all(id(m) in in_transformers for m in unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert sum(p.numel() for p in unet.parameters()) < n_params  # dense conv weights dropped, not duplicated
    with pytest.raises(RuntimeError, match="inference-only"):
        unet(x.requires_grad_(), t, context)


@needs_onednn
def test_packed_conv_is_bit_identical_to_the_channels_last_conv() -> None:
    convs = _randomize(torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Conv2d(16, 4, 1)), 7)
    x = torch.randn(2, 8, 9, 7, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = convs.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        packed = prepack_convolutions(convs)
        assert all(isinstance(layer, PackedConv2d) for layer in packed)
        assert torch.equal(packed(x), expected)


@needs_onednn
@pytest.mark.parametrize("upsample", [Upsample(64, use_conv=True), DecoderUpsample(64, with_conv=True)])
def test_packed_upsample_conv_is_as_accurate_as_the_direct_form(upsample: torch.nn.Module) -> None:
    """Against a float64 reference the fused packed form errs no more than the direct float32 form (fewer sums)."""
    _randomize(upsample, 4)
    x = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        exact = F.conv2d(F.interpolate(x.double(), scale_factor=2.0), upsample.conv.weight.double(),
                         upsample.conv.bias.double(), padding=1)
        direct = upsample.conv(F.interpolate(x, scale_factor=2.0))
        packed = prepack_convolutions(torch.nn.Sequential(upsample))[0]
        assert isinstance(packed, PackedUpsampleConv)
        out = packed(x)
    assert out.shape == (2, 64, 16, 16) and out.is_contiguous(memory_format=torch.channels_last)
    assert (out.double() - exact).abs().max() <= (direct.double() - exact).abs().max() * 1.5
    with pytest.raises(ValueError, match="Upsample expects 64 input channels"):
        packed(x[:, :32])
