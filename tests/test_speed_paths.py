"""The inference modules of ``ldm.modules.fast`` compute the reference blocks' numbers (within float rounding,
exactly where the arithmetic is the same), share the reference weights instead of copying them, keep the memory
format, fall back to plain ops where a private torch op is missing, and refuse to run with autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.attention import FeedForward, SpatialTransformer
from ldm.modules.diffusionmodules.model import Upsample as DecoderUpsample
from ldm.modules.diffusionmodules.openaimodel import UNetModel, Upsample
from ldm.modules.diffusionmodules.prepack import PackedConv2d, PackedUpsampleConv, prepack_convolutions
from ldm.modules.fast import feedforward as fast_feedforward
from ldm.modules.fast import packed_conv
from ldm.modules.fast.blocks import swap_fast_blocks
from ldm.modules.fast.feedforward import GEGLUFeedForwardInference
from tests.helpers import RecordShapes


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
    return module.eval()


def _tiny_unet() -> UNetModel:
    torch.manual_seed(0)
    unet = UNetModel(
        image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
        num_res_blocks=1, channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True, context_dim=16,
    )
    return _randomize(unet, 2)


def _unet_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([3, 900]), torch.randn(2, 5, 16, generator=gen)


# ------------------------------------------------------------------------------------------------------------
# Gated feed-forward in row chunks
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 5, 12, 13])
def test_chunked_feedforward_is_the_reference_exactly_in_float64(monkeypatch, tokens: int) -> None:
    """2 x 13 tokens in chunks of 4 rows: six full chunks and a 2-row rest, every row the reference's math."""
    reference = _randomize(FeedForward(8, dim_out=6, mult=3, glu=True).double(), 0)
    fast = GEGLUFeedForwardInference(reference)
    monkeypatch.setattr(GEGLUFeedForwardInference, "ROWS", 4)
    x = torch.randn(2, tokens, 8, dtype=torch.float64)
    with torch.no_grad():
        out, ref = fast(x), reference(x)
    assert out.shape == (2, tokens, 6)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)


def test_chunked_feedforward_shares_the_weights_and_bounds_the_intermediate(monkeypatch) -> None:
    reference = _randomize(FeedForward(8, mult=4, glu=True), 0)
    fast = GEGLUFeedForwardInference(reference)
    assert set(fast.state_dict()) == set(reference.state_dict())
    assert all(a is b for a, b in zip(fast.parameters(), reference.parameters(), strict=True))
    monkeypatch.setattr(GEGLUFeedForwardInference, "ROWS", 16)
    with torch.no_grad(), RecordShapes() as rec:
        out = fast(torch.randn(2, 40, 8))
    widest = [shape for _, shapes in rec.ops for shape in shapes if shape and shape[-1] == 2 * 32]
    assert widest and max(shape[0] for shape in widest) == 16
    assert out.shape == (2, 40, 8)


def test_chunked_feedforward_without_the_in_place_gelu_op_gives_the_same_numbers(monkeypatch) -> None:
    reference = _randomize(FeedForward(8, mult=2, glu=True), 1)
    x = torch.randn(3, 7, 8)
    with torch.no_grad():
        with_op = GEGLUFeedForwardInference(reference)(x)
        monkeypatch.setattr(fast_feedforward, "has_torch_op", lambda namespace, name: False)
        without_op = GEGLUFeedForwardInference(reference)(x)
    assert torch.equal(with_op, without_op)


def test_chunked_feedforward_runs_shape_only_on_the_meta_device() -> None:
    with torch.device("meta"):
        fast = GEGLUFeedForwardInference(FeedForward(8, mult=4, glu=True).eval())
        x = torch.empty(2, 5000, 8)
    with torch.no_grad():
        out = fast(x)
    assert out.device.type == "meta" and out.shape == (2, 5000, 8)


# ------------------------------------------------------------------------------------------------------------
# Spatial transformer: 1x1 convs per token, layout kept
# ------------------------------------------------------------------------------------------------------------


def _conv_form(st: SpatialTransformer, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``proj_in``/``proj_out`` run as the 1x1 convs on the image, the residual added last."""
    height = x.shape[2]
    tokens = rearrange(st.proj_in(st.norm(x)), "b c h w -> b (h w) c")
    for block in st.transformer_blocks:
        tokens = block(tokens, context=context)
    return st.proj_out(rearrange(tokens, "b (h w) c -> b c h w", h=height)) + x


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_spatial_transformer_equals_its_conv_form_and_keeps_the_layout(memory_format: torch.memory_format) -> None:
    st = _randomize(SpatialTransformer(64, n_heads=2, d_head=32, context_dim=16), 0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 64, 6, 5, generator=gen).contiguous(memory_format=memory_format)
    context = torch.randn(2, 7, 16, generator=gen)
    with torch.no_grad():
        out, ref = st(x, context), _conv_form(st, x.contiguous(), context)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out.is_contiguous(memory_format=memory_format)


def test_fast_blocks_swap_shares_every_weight_and_keeps_the_unet_numbers() -> None:
    unet = _tiny_unet()
    keys = set(unet.state_dict())
    storages = {p.data_ptr() for p in unet.parameters()}
    x, t, context = _unet_inputs(3)
    with torch.no_grad():
        ref = unet(x, t, context)
        swapped = swap_fast_blocks(unet)
        out = unet(x, t, context)
    kinds = [type(m) for m in unet.modules()]
    assert swapped == kinds.count(GEGLUFeedForwardInference) == 7 and FeedForward not in kinds
    assert set(unet.state_dict()) == keys and {p.data_ptr() for p in unet.parameters()} == storages
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_nchw_unet_stays_nchw_through_every_block() -> None:
    """A channels-last view leaking out of an attention layer makes later convs re-layout their weights."""
    for fast in (False, True):
        unet = _tiny_unet()
        if fast:
            swap_fast_blocks(unet)
        layouts: list[bool] = []
        for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks]:
            block.register_forward_hook(lambda m, i, o, seen=layouts: seen.append(o.is_contiguous()))
        with torch.no_grad():
            unet(*_unet_inputs(3))
        assert layouts and all(layouts)


def test_channels_last_unet_equals_nchw_unet() -> None:
    unet = _tiny_unet()
    x, t, context = _unet_inputs(4)
    with torch.no_grad():
        ref = unet(x, t, context)
        unet.to(memory_format=torch.channels_last)
        out = unet(x.contiguous(memory_format=torch.channels_last), t, context)
    assert ref.abs().mean() > 1e-2
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# Packed convolutions
# ------------------------------------------------------------------------------------------------------------

needs_onednn = pytest.mark.skipif(not packed_conv.onednn_packing_available(), reason="no oneDNN packing ops")


@needs_onednn
def test_prepacked_unet_gives_the_channels_last_numbers_and_drops_the_dense_weights() -> None:
    """Equal to the channels-last numbers within float rounding (the fused upsampling convs sum in another order)."""
    unet = _tiny_unet()
    x, t, context = _unet_inputs(5)
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


@needs_onednn
def test_packed_conv_is_bit_identical_to_the_channels_last_conv() -> None:
    convs = _randomize(torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Conv2d(16, 4, 1)), 7)
    x = torch.randn(2, 8, 9, 7, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = convs.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        packed = prepack_convolutions(convs)
        assert all(isinstance(layer, PackedConv2d) and layer.onednn for layer in packed)
        assert torch.equal(packed(x), expected)
        assert torch.equal(packed(x[:1]), expected[:1])  # a new input shape re-packs


def test_packed_conv_without_the_onednn_ops_runs_the_plain_conv(monkeypatch) -> None:
    monkeypatch.setattr(packed_conv, "has_torch_op", lambda namespace, name: False)
    conv = _randomize(torch.nn.Conv2d(8, 16, 3, padding=1, stride=2), 9)
    upsample = _randomize(Upsample(8, use_conv=True), 10)
    x = torch.randn(2, 8, 9, 7, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected_conv, expected_up = conv(x), upsample(x)
        packed, fused = PackedConv2d(conv), PackedUpsampleConv(upsample.conv)
        assert not packed.onednn and not fused.phases.onednn
        torch.testing.assert_close(packed(x), expected_conv, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fused(x), expected_up, rtol=1e-5, atol=1e-5)


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


# ------------------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------------------


def _fast_cases() -> list[tuple[str, torch.nn.Module, torch.Tensor, dict]]:
    return [
        ("GEGLUFeedForwardInference", GEGLUFeedForwardInference(FeedForward(8, glu=True)), torch.randn(2, 3, 8), {}),
        ("PackedConv2d", PackedConv2d(torch.nn.Conv2d(3, 4, 3, padding=1)), torch.randn(1, 3, 5, 5), {}),
    ]


@pytest.mark.parametrize("name, module, x, kwargs", _fast_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_fast_modules_refuse_to_run_with_autograd(name: str, module: torch.nn.Module, x: torch.Tensor,
                                                  kwargs: dict) -> None:
    with pytest.raises(RuntimeError, match=f"{name} is an inference-only fast module; run it under torch.no_grad"):
        module(x.requires_grad_(), **kwargs)
    with torch.no_grad():
        module(x, **kwargs)


def test_the_chunked_feedforward_refuses_active_dropout() -> None:
    fast = GEGLUFeedForwardInference(FeedForward(8, glu=True, dropout=0.1)).train()
    with torch.no_grad(), pytest.raises(RuntimeError, match="has no dropout; call .eval"):
        fast(torch.randn(1, 2, 8))
    with torch.no_grad():
        fast.eval()(torch.randn(1, 2, 8))


@pytest.mark.parametrize(
    "make, reference, message",
    [
        (GEGLUFeedForwardInference, FeedForward(8, glu=False), "replaces a FeedForward with a GEGLU input layer"),
        (PackedConv2d, torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), "numeric zero padding"),
        (PackedUpsampleConv, torch.nn.Conv2d(3, 4, 1), "fuses a 3x3 nn.Conv2d with padding 1"),
    ],
)
def test_fast_modules_refuse_what_they_do_not_replace(make, reference, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(reference)
