"""Tiny random latent diffusion models for the LoRA tests (identity first stage, 1-layer text transformer)."""

from __future__ import annotations

import zlib
from typing import Any

import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config

PLAIN = "ldm.models.diffusion.ddpm.LatentDiffusion"
LORA = "ldm.models.diffusion.lora_diffusion.LoraLatentDiffusion"
CAPTIONS = ["a small red circle at the top left", "a large orange square at the center"]


def tiny_config(target: str = PLAIN, **params: Any) -> dict:
    """A text-conditional LatentDiffusion on 8x8x4 latents: UNet 32 channels, two levels with attention."""
    return {
        "target": target,
        "params": {
            "timesteps": 10, "image_size": 8, "channels": 4, "cond_stage_trainable": True,
            "conditioning_key": "crossattn", "cond_stage_key": "caption", "first_stage_key": "image",
            "monitor": None, "use_ema": False,
            "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
                "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                "attention_resolutions": [1, 2], "num_res_blocks": 1, "channel_mult": [1, 2],
                "num_head_channels": 16, "use_spatial_transformer": True, "context_dim": 32,
                "checkpoint_transformers": False}},
            "first_stage_config": {"target": "ldm.models.autoencoder.IdentityFirstStage"},
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.BERTEmbedder", "params": {
                "n_embed": 32, "n_layer": 1, "tokenizer": "clip", "vocab_size": 49408, "max_seq_len": 8}},
            **params,
        },
    }


def build(config: dict, seed: int = 0, offsets: bool = True) -> torch.nn.Module:
    """The model of ``config``; every base parameter gets a small offset fixed by its name (so the zero-initialised
    output layers do not hide the rest, and plain and LoRA models built from one seed hold the same base weights)."""
    torch.manual_seed(seed)
    model = instantiate_from_config(OmegaConf.create(config)).eval()
    if not offsets:
        return model
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                continue
            generator = torch.Generator().manual_seed(zlib.crc32(name.replace(".base_layer.", ".").encode()) + seed)
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


@torch.no_grad()
def denoiser_output(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    """ε̂(z_t, t, c) of two fixed latents and the two captions (text encoder included)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([3, 7])
    return model.apply_model(x, t, model.get_learned_conditioning(CAPTIONS))


@torch.no_grad()
def randomize_adapters(model: torch.nn.Module, seed: int = 2) -> None:
    """Non-zero U (and fresh D) in every adapter, so that the adapters change the model's function."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
