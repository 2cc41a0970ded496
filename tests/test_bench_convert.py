"""bench/convert_diffusers.py: our SD v1 weights in diffusers' layout compute the same function (tiny models)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from bench.convert_diffusers import (
    clip_to_diffusers,
    unet_diffusers_config,
    unet_from_diffusers,
    unet_to_diffusers,
    vae_diffusers_config,
    vae_from_diffusers,
    vae_to_diffusers,
)
from ldm.models.autoencoder import AutoencoderKL
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.util import instantiate_from_config

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e '.[bench]')")

ATOL = 1e-4


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random non-zero weights everywhere (zero-initialised output convs would hide mapping errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module.eval()


@pytest.fixture(scope="module")
def tiny_unet() -> UNetModel:
    """Three levels, attention on the first two only, so CrossAttn and plain blocks and both upsampler slots occur."""
    torch.manual_seed(0)
    unet = UNetModel(
        image_size=16, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2, 1],
        num_res_blocks=1, channel_mult=[1, 2, 2], num_heads=4, use_spatial_transformer=True, context_dim=16,
        legacy=False,
    )
    return _randomize(unet)


@pytest.fixture(scope="module")
def tiny_vae() -> AutoencoderKL:
    ddconfig = dict(
        double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
        num_res_blocks=1, attn_resolutions=[], dropout=0.0,
    )
    return _randomize(AutoencoderKL(ddconfig=ddconfig, lossconfig={"target": "torch.nn.Identity"}, embed_dim=4), 1)


def test_unet_converted_weights_give_equal_outputs(tiny_unet: UNetModel) -> None:
    theirs = diffusers.UNet2DConditionModel(**unet_diffusers_config(tiny_unet)).eval()
    theirs.load_state_dict(unet_to_diffusers(tiny_unet), strict=True)
    gen = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 7, 16, generator=gen)
    t = torch.tensor([10, 731])
    with torch.no_grad():
        ours, ref = tiny_unet(x, t, context), theirs(x, t, context).sample
    assert ours.abs().mean() > 1e-2
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_unet_round_trip_is_identity(tiny_unet: UNetModel) -> None:
    back = unet_from_diffusers(tiny_unet, unet_to_diffusers(tiny_unet))
    assert back.keys() == tiny_unet.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in tiny_unet.state_dict().items())


def test_vae_converted_weights_give_equal_decode_and_encode(tiny_vae: AutoencoderKL) -> None:
    theirs = diffusers.AutoencoderKL(**vae_diffusers_config(tiny_vae)).eval()
    theirs.load_state_dict(vae_to_diffusers(tiny_vae), strict=True)
    gen = torch.Generator().manual_seed(2)
    z, image = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(tiny_vae.decode(z), theirs.decode(z).sample, atol=ATOL, rtol=0)
        ours, ref = tiny_vae.encode(image), theirs.encode(image).latent_dist
        torch.testing.assert_close(ours.mean, ref.mean, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours.logvar, ref.logvar, atol=ATOL, rtol=0)
    back = vae_from_diffusers(tiny_vae, theirs.state_dict())
    assert all(torch.equal(back[k], v) for k, v in tiny_vae.state_dict().items())


def test_clip_keys_map_onto_a_clip_text_model() -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    from ldm.modules.encoders.clip_text import with_sd_layout

    config = CLIPTextConfig(
        vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=12,
    )
    ours = with_sd_layout(CLIPTextModel(config)).eval()
    theirs = CLIPTextModel(config).eval()
    state = {f"transformer.{k}": v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(clip_to_diffusers(state, set(theirs.state_dict())), strict=True)
    ids = torch.randint(0, 99, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).last_hidden_state, theirs(input_ids=ids).last_hidden_state)


def test_full_size_sd_v1_keys_map_one_to_one() -> None:
    """Every key of the v1-inference UNet and autoencoder lands on a diffusers key of the same shape (meta)."""
    config = OmegaConf.load("configs/stable-diffusion/v1-inference.yaml").model.params
    with torch.device("meta"):
        unet = instantiate_from_config(config.unet_config)
        vae = instantiate_from_config(config.first_stage_config)
        d_unet = diffusers.UNet2DConditionModel(**unet_diffusers_config(unet))
        d_vae = diffusers.AutoencoderKL(**vae_diffusers_config(vae))
    for ours, theirs in ((unet_to_diffusers(unet), d_unet.state_dict()), (vae_to_diffusers(vae), d_vae.state_dict())):
        assert ours.keys() == theirs.keys()
        assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_unsupported_architecture_is_named() -> None:
    with torch.device("meta"):
        unet = UNetModel(
            image_size=8, in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[2],
            num_res_blocks=1, channel_mult=[1, 2], num_heads=2,
        )
    with pytest.raises(ValueError, match="use_spatial_transformer"):
        unet_diffusers_config(unet)
