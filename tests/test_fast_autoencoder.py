"""ldm.modules.fast.autoencoder: each fast layer computes its reference layer's function (bit for bit where only the
memory layout of the work changes, within float rounding for the fused upsample-conv), the swap shares the
parameters and keeps the state dict, the fast layers refuse autograd, and the reference layers never take a fast
path."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from ldm.models.autoencoder import AutoencoderKL
from ldm.modules.diffusionmodules import upsample_conv as upsample_conv_module
from ldm.modules.diffusionmodules.model import Decoder, ResnetBlock, Upsample
from ldm.modules.fast import autoencoder as fast
from ldm.modules.fast.autoencoder import (
    BandedConv2d,
    FastResnetBlock,
    FastUpsample,
    is_bandable,
    swap_fast_autoencoder,
)
from ldm.util import instantiate_from_config
from tests.helpers import REFDATA

TINY_DDCONFIG = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
                     num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
IDENTITY = {"target": "torch.nn.Identity"}


def _randomize(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return module


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kernel, band_bytes", [(3, 1), (3, 2000), (1, 3000), (5, 5000), (3, 10**9)])
def test_banded_conv_is_bit_equal_to_the_conv(kernel: int, band_bytes: int) -> None:
    conv = _randomize(nn.Conv2d(16, 8, kernel, padding=kernel // 2))
    x = _randn(2, 16, 13, 11)
    banded = BandedConv2d(conv, band_bytes=band_bytes)
    assert banded.weight is conv.weight and banded.bias is conv.bias
    assert list(banded.state_dict()) == ["weight", "bias"]
    with torch.no_grad():
        assert torch.equal(banded(x), conv(x))


@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=0), nn.Conv2d(4, 4, 2, padding=1),
     nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Conv2d(4, 4, 3, padding=2, dilation=2)],
)
def test_only_same_stride_one_convs_are_banded(conv: nn.Conv2d) -> None:
    assert not is_bandable(conv)
    with pytest.raises(ValueError, match="stride-1 'same' nn.Conv2d"):
        BandedConv2d(conv)


@pytest.mark.parametrize(
    "out_channels, conv_shortcut, temb_channels", [(32, False, 0), (64, False, 0), (64, True, 0), (64, False, 16)]
)
def test_fast_resnet_block_is_bit_equal_and_leaves_its_input_alone(
    out_channels: int, conv_shortcut: bool, temb_channels: int
) -> None:
    block = _randomize(ResnetBlock(in_channels=32, out_channels=out_channels, conv_shortcut=conv_shortcut,
                                   dropout=0.0, temb_channels=temb_channels)).eval()
    x, temb = _randn(2, 32, 6, 6), (_randn(2, temb_channels, seed=2) if temb_channels else None)
    x_before = x.clone()
    fast_block = FastResnetBlock(block, band_bytes=1000)  # bands of a few rows
    assert fast_block.state_dict().keys() == block.state_dict().keys()
    assert all(a is b for a, b in zip(fast_block.parameters(), block.parameters(), strict=True))
    with torch.no_grad():
        expected = block(x, temb)
        out = fast_block(x, temb)
    assert torch.equal(out, expected) and torch.equal(x, x_before)


def test_fast_upsample_equals_the_upsample_in_float64() -> None:
    """The fused form sums the same products in another order: equal to rounding, here float64's."""
    upsample = _randomize(Upsample(8, with_conv=True)).double()
    x = _randn(2, 8, 6, 5).double()
    with torch.no_grad():
        out, expected = FastUpsample(upsample)(x), upsample(x)
    assert out.shape == (2, 8, 12, 10)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="plain 3x3 padding-1 conv"):
        FastUpsample(Upsample(8, with_conv=False))


def test_swapped_decoder_equals_the_reference_and_is_as_accurate() -> None:
    """float64: the same function; float32: no further from the float64 result than the reference ops are."""
    decoder = _randomize(Decoder(**TINY_DDCONFIG), seed=1, scale=0.09).eval()
    reference = Decoder(**TINY_DDCONFIG).eval()
    reference.load_state_dict(decoder.state_dict())
    z = _randn(1, 4, 8, 8)
    assert swap_fast_autoencoder(decoder, band_bytes=4096) == 11  # 8 ResnetBlocks, 2 Upsamples, conv_out
    with torch.no_grad():
        fast32, ref32 = decoder(z), reference(z)
        exact = reference.double()(z.double())
        fast64 = decoder.double()(z.double())
    torch.testing.assert_close(fast64, exact, rtol=1e-12, atol=1e-12)
    scale = float(exact.abs().max())
    assert (fast32 - exact).abs().max() <= 2 * (ref32 - exact).abs().max() + 1e-7 * scale


def test_swap_into_an_autoencoder_keeps_its_state_dict_and_the_original_numbers() -> None:
    """The tiny reference autoencoder (tests/refdata), swapped: every tensor stays (the same storage), the keys
    stay, and encoder features and decodes still match the original code's outputs."""
    reference = torch.load(REFDATA / "vectors" / "ldm_tiny.pt", weights_only=True)["autoencoder"]
    model = instantiate_from_config(OmegaConf.load(REFDATA / "configs" / "autoencoder_kl_tiny.yaml").model)
    model.load_state_dict(reference["state_dict"], strict=True)
    model.eval()
    before = {key: tensor.data_ptr() for key, tensor in model.state_dict().items()}
    blocks = sum(isinstance(m, ResnetBlock) for m in model.modules())
    upsamples = sum(isinstance(m, Upsample) for m in model.modules())

    assert swap_fast_autoencoder(model) == blocks + upsamples + 1
    assert {key: tensor.data_ptr() for key, tensor in model.state_dict().items()} == before
    assert not any(isinstance(m, (ResnetBlock, Upsample)) for m in model.modules())
    assert sum(isinstance(m, FastResnetBlock) for m in model.modules()) == blocks
    assert sum(isinstance(m, FastUpsample) for m in model.modules()) == upsamples
    assert isinstance(model.decoder.conv_out, BandedConv2d)
    assert swap_fast_autoencoder(model) == 0  # nothing left to swap

    image, expected = reference["inputs"]["image"], reference["outputs"]
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(image), expected["encoder_h"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.decode(model.encode(image).mean), expected["decode_mean"], rtol=1e-4,
                                   atol=1e-4)


def test_fast_layers_refuse_autograd() -> None:
    model = AutoencoderKL(ddconfig=TINY_DDCONFIG, lossconfig=IDENTITY, embed_dim=4)
    swap_fast_autoencoder(model)
    z = torch.randn(1, 4, 8, 8)
    with pytest.raises(RuntimeError, match="inference-only fast module"):
        model.decode(z)
    with pytest.raises(RuntimeError, match="FastResnetBlock is an inference-only"):
        model.encode(torch.randn(1, 3, 32, 32))
    model.requires_grad_(False)
    with pytest.raises(RuntimeError, match="FastUpsample is an inference-only"):
        model.decoder.up[1].upsample(torch.randn(1, 64, 8, 8, requires_grad=True))
    with torch.no_grad():
        assert model.decode(z).shape == (1, 3, 32, 32)


def test_the_reference_layers_never_take_a_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training (autograd on) and plain no-grad calls of the reference model: only reference modules run, and
    neither the fused upsample-conv nor an in-place swish is called."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a fast path ran inside the reference model")

    monkeypatch.setattr(upsample_conv_module, "upsample_conv", forbidden)
    monkeypatch.setattr(fast, "upsample_conv", forbidden)
    real_silu = F.silu

    def silu(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        if inplace:
            forbidden()
        return real_silu(x)

    monkeypatch.setattr(F, "silu", silu)
    model = _randomize(AutoencoderKL(ddconfig=TINY_DDCONFIG, lossconfig=IDENTITY, embed_dim=4))
    ran: list[type] = []
    for module in model.modules():
        module.register_forward_hook(lambda m, args, out: ran.append(type(m)))
    image = torch.randn(2, 3, 32, 32)
    reconstruction, _ = model(image)
    reconstruction.square().mean().backward()
    assert model.decoder.conv_out.weight.grad is not None
    with torch.no_grad():
        model(image)
    assert ResnetBlock in ran and Upsample in ran
    assert not [kind for kind in ran if kind.__module__.startswith("ldm.modules.fast")]
