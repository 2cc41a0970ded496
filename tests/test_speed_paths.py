"""The speed paths compute the original numbers: 1x1 convs as matrix products in SpatialTransformer, memory-format
preservation (no channels-last leak into NCHW models), the channels-last UNet, prepacked convs, the fused swish."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.model import nonlinearity
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.diffusionmodules.prepack import prepack_convolutions


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


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN (mkldnn)")
def test_prepacked_unet_gives_the_channels_last_numbers_and_refuses_gradients() -> None:
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
    assert torch.equal(out, ref_last)
    in_transformers = {id(m) for st in unet.modules() if isinstance(st, SpatialTransformer) for m in st.modules()}
    assert all(id(m) in in_transformers for m in unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert sum(p.numel() for p in unet.parameters()) < n_params  # dense conv weights dropped, not duplicated
    with pytest.raises(RuntimeError, match="inference-only"):
        unet(x.requires_grad_(), t, context)
