"""ldm.models.vae_tiling: tile layout, blend weights that sum to 1, tiled == untiled for local decoders, one tile
unchanged, the AutoencoderKL hook and its validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.models.autoencoder import AutoencoderKL
from ldm.models.vae_tiling import blend_weights, set_vae_tiling, tile_spans, tiled_decode

TINY_DDCONFIG = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                     num_res_blocks=1, attn_resolutions=[], dropout=0.0)


class LocalDecoder(nn.Module):
    """Nearest ×factor upsampling, then a 3×3 conv: every pixel depends on its latent neighbourhood only, the
    outermost pixel of a tile on the zero padding."""

    def __init__(self, factor: int, channels: int = 4) -> None:
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv2d(channels, 3, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(z, scale_factor=self.factor, mode="nearest"))


@pytest.mark.parametrize("size, tile, overlap", [(100, 64, 16), (130, 64, 16), (65, 64, 0), (17, 5, 4), (7, 8, 2)])
def test_tile_spans_cover_with_at_least_the_overlap(size: int, tile: int, overlap: int) -> None:
    spans = tile_spans(size, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(stop - start == min(tile, size) for start, stop in spans)
    assert all(prev[1] - nxt[0] >= overlap for prev, nxt in zip(spans, spans[1:]))
    assert all(nxt[0] > prev[0] for prev, nxt in zip(spans, spans[1:]))


@pytest.mark.parametrize(
    "size, tile, overlap, factor", [(100, 64, 16, 8), (33, 8, 3, 2), (17, 5, 4, 1), (65, 64, 0, 4)]
)
def test_blend_weights_sum_to_one_and_vanish_at_inner_edges(size: int, tile: int, overlap: int, factor: int) -> None:
    spans = tile_spans(size, tile, overlap)
    weights = blend_weights(spans, factor)
    total = torch.zeros(size * factor, dtype=torch.float64)
    for (start, stop), weight in zip(spans, weights):
        assert weight.shape == ((stop - start) * factor,) and (weight >= 0).all()
        total[start * factor : stop * factor] += weight
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)
    for i, ((start, stop), weight) in enumerate(zip(spans, weights)):
        if i > 0 and spans[i - 1][1] > start:
            assert weight[0] == 0
        if i < len(spans) - 1 and stop > spans[i + 1][0]:
            assert weight[-1] == 0


@pytest.mark.parametrize("shape, tile, overlap, factor", [
    ((2, 4, 24, 24), 10, 4, 4),
    ((1, 4, 19, 31), 8, 3, 2),
    ((1, 4, 13, 9), 6, 5, 8),
    ((1, 4, 20, 12), 8, 1, 1),
])
def test_tiled_equals_untiled_for_a_local_decoder(shape: tuple, tile: int, overlap: int, factor: int) -> None:
    torch.manual_seed(0)
    decoder = LocalDecoder(factor)
    z = torch.randn(shape)
    with torch.no_grad():
        expected = decoder(z)
        tiled = tiled_decode(decoder, z, factor, tile=tile, overlap=overlap)
    assert tiled.shape == expected.shape
    torch.testing.assert_close(tiled, expected, rtol=0, atol=1e-6)


def test_latent_in_one_tile_is_decoded_as_is() -> None:
    decoder = LocalDecoder(2)
    z = torch.randn(1, 4, 16, 12)
    with torch.no_grad():
        assert torch.equal(tiled_decode(decoder, z, 2, tile=16, overlap=4), decoder(z))


def test_wrong_factor_and_bad_sizes_are_reported() -> None:
    decoder = LocalDecoder(2)
    z = torch.randn(1, 4, 20, 20)
    with pytest.raises(ValueError, match="upsampling factor"):
        tiled_decode(decoder, z, 4, tile=8, overlap=2)
    with pytest.raises(ValueError, match="tile=8 must be larger than overlap=8"):
        tiled_decode(decoder, z, 2, tile=8, overlap=8)
    with pytest.raises(ValueError, match="overlap=-1"):
        tiled_decode(decoder, z, 2, tile=8, overlap=-1)


def _psnr(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(10 * torch.log10(expected.var() / (actual - expected).pow(2).mean()))


def test_autoencoder_kl_tiled_decode_is_close_to_untiled() -> None:
    """Random weights and a white-noise latent (the hardest case: per-tile GroupNorm statistics and middle
    attention differ most): the blended tiles stay close, and far closer than abutting tiles."""
    torch.manual_seed(0)
    model = AutoencoderKL(TINY_DDCONFIG, {"target": "torch.nn.Identity"}, embed_dim=4).eval()
    assert model.vae_tiling is None
    z = torch.randn(1, 4, 30, 30)
    with torch.no_grad():
        expected = model.decode(z)
        set_vae_tiling(model, 15, overlap=0)
        seams = model.decode(z)
        set_vae_tiling(model, 20, overlap=8)
        assert model.vae_tiling == (20, 8)
        tiled = model.decode(z)
        set_vae_tiling(model, None)
        assert torch.equal(model.decode(z), expected)
    assert tiled.shape == expected.shape == (1, 3, 60, 60) and torch.isfinite(tiled).all()
    assert _psnr(tiled, expected) > 15
    assert _psnr(tiled, expected) > _psnr(seams, expected) + 5


def test_set_vae_tiling_validates_and_finds_nested_autoencoders() -> None:
    model = AutoencoderKL(TINY_DDCONFIG, {"target": "torch.nn.Identity"}, embed_dim=4)
    wrapper = nn.ModuleDict({"first_stage_model": model})
    set_vae_tiling(wrapper, 32)
    assert model.vae_tiling == (32, 16)
    with pytest.raises(ValueError, match="tile=16 must be larger than overlap=16"):
        set_vae_tiling(model, 16)
    with pytest.raises(ValueError, match="holds no AutoencoderKL"):
        set_vae_tiling(nn.Linear(2, 2), 64)
