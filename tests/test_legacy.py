"""ldm.legacy: the modules kept for original import paths resolve from those paths and import no façade."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ldm.legacy

LEGACY_DDCONFIG = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
                       num_res_blocks=1, attn_resolutions=[8], dropout=0.0)

LEGACY_NAMES = {
    "ldm.legacy.rescalers": ("SimpleDecoder", "UpsampleDecoder", "LatentRescaler", "MergedRescaleEncoder",
                             "MergedRescaleDecoder", "Upsampler", "Resize", "FirstStagePostProcessor"),
    "ldm.legacy.pixel_unet": ("Model", "get_timestep_embedding"),
}


@pytest.mark.parametrize("module", sorted(LEGACY_NAMES))
def test_original_path_serves_the_legacy_object(module: str) -> None:
    original = importlib.import_module("ldm.modules.diffusionmodules.model")
    home = importlib.import_module(module)
    for name in LEGACY_NAMES[module]:
        assert getattr(original, name) is getattr(home, name), name


@pytest.mark.parametrize("module", sorted(LEGACY_NAMES))
def test_legacy_module_does_not_import_the_facade_that_re_exports_it(module: str) -> None:
    path = Path(ldm.legacy.__file__).parent / f"{module.rsplit('.', 1)[1]}.py"
    imported = {node.module for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)}
    assert "ldm.modules.diffusionmodules.model" not in imported


def test_get_timestep_embedding_is_the_ddpm_sinusoid() -> None:
    from ldm.modules.diffusionmodules.model import get_timestep_embedding

    t = torch.tensor([0, 3, 999])
    emb = get_timestep_embedding(t, 9)
    freqs = torch.exp(-torch.arange(4, dtype=torch.float32) * torch.log(torch.tensor(10000.0)) / 3)
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs), torch.zeros(3, 1)], dim=1)
    torch.testing.assert_close(emb, expected)
    with pytest.raises(ValueError, match="timesteps"):
        get_timestep_embedding(t[:, None], 8)


def test_pixel_model_keys_and_skip_connections() -> None:
    from ldm.modules.diffusionmodules.model import Model

    torch.manual_seed(0)
    model = Model(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=[8], in_channels=5,
                  resolution=16).eval()
    keys = model.state_dict()
    assert keys["temb.dense.0.weight"].shape == (128, 32) and keys["temb.dense.1.weight"].shape == (128, 128)
    assert keys["conv_in.weight"].shape == (32, 5, 3, 3)
    assert keys["up.0.block.1.conv1.weight"].shape == (32, 64, 3, 3)  # 32 + skip of 32 (the first level's input)
    assert keys["up.1.block.0.nin_shortcut.weight"].shape == (64, 128, 1, 1)
    assert {"up.1.attn.0.q.weight", "down.1.attn.0.q.weight", "down.0.downsample.conv.weight"} <= set(keys)
    assert "down.1.downsample.conv.weight" not in keys
    assert model.get_last_layer() is model.conv_out.weight
    x, context, t = torch.randn(2, 3, 16, 16), torch.randn(2, 2, 16, 16), torch.tensor([1, 500])
    with torch.no_grad():
        out = model(x, t, context=context)
        assert out.shape == (2, 3, 16, 16)
        assert not torch.allclose(out, model(x, torch.tensor([2, 501]), context=context))  # t conditions
    with pytest.raises(ValueError, match="timesteps"):
        model(x, context=context)


def test_latent_rescaler_and_merged_rescale_models() -> None:
    from ldm.modules.diffusionmodules.model import LatentRescaler, MergedRescaleDecoder, MergedRescaleEncoder

    torch.manual_seed(0)
    rescaler = LatentRescaler(factor=1.5, in_channels=4, mid_channels=32, out_channels=6, depth=2)
    assert rescaler(torch.randn(1, 4, 6, 6)).shape == (1, 6, 9, 9)
    assert list(rescaler.state_dict())[:2] == ["conv_in.weight", "conv_in.bias"]
    encoder = MergedRescaleEncoder(in_channels=3, ch=32, resolution=16, out_ch=4, num_res_blocks=1,
                                   attn_resolutions=[], ch_mult=(1, 1), rescale_factor=0.5)
    assert encoder.encoder.conv_out.out_channels == 32  # single z of ch·ch_mult[-1] channels
    assert encoder(torch.randn(1, 3, 16, 16)).shape == (1, 4, 4, 4)
    decoder = MergedRescaleDecoder(z_channels=32, out_ch=3, resolution=16, num_res_blocks=1, attn_resolutions=[],
                                   ch=32, ch_mult=(1, 1), rescale_factor=2.0)
    assert decoder(torch.randn(1, 32, 4, 4)).shape == (1, 3, 16, 16)


def test_upsampler_simple_and_upsample_decoders_and_resize() -> None:
    from ldm.modules.diffusionmodules.model import Resize, SimpleDecoder, UpsampleDecoder, Upsampler

    torch.manual_seed(0)
    assert Upsampler(in_size=8, out_size=16, in_channels=32, out_channels=3)(torch.randn(1, 32, 8, 8)).shape == (
        1, 3, 16, 16)
    assert SimpleDecoder(32, 3)(torch.randn(1, 32, 4, 4)).shape == (1, 3, 8, 8)
    decoder = UpsampleDecoder(in_channels=32, out_channels=3, ch=32, num_res_blocks=1, resolution=16, ch_mult=(2, 2))
    assert decoder(torch.randn(1, 32, 8, 8)).shape == (1, 3, 16, 16)
    x = torch.randn(1, 3, 4, 4)
    assert Resize()(x) is x
    torch.testing.assert_close(Resize()(x, scale_factor=2.0), F.interpolate(x, scale_factor=2.0, mode="bilinear"))
    with pytest.raises(NotImplementedError):
        Resize(learned=True)


def test_first_stage_post_processor_uses_the_posterior_mode() -> None:
    from ldm.models.autoencoder import AutoencoderKL
    from ldm.modules.diffusionmodules.model import FirstStagePostProcessor

    torch.manual_seed(0)
    first_stage = AutoencoderKL(ddconfig=LEGACY_DDCONFIG, lossconfig={"target": "torch.nn.Identity"}, embed_dim=4)
    processor = FirstStagePostProcessor(ch_mult=[1, 2], in_channels=4, pretrained_model=first_stage, reshape=True)
    x = torch.randn(2, 3, 32, 32)
    out = processor(x)
    assert out.shape == (2, 2 * 2, 64)  # 8x8 latent, two 2x2 poolings, n_channels = encoder.ch = 32, ×2
    with torch.no_grad():
        torch.testing.assert_close(processor.encode_with_pretrained(x), first_stage.encode(x).mean)
    assert processor.proj_norm.num_groups == 2
