"""Tiny stand-ins the SD 2.x model tests build from configs (``tests.sd2_fakes.<Class>``): a text conditioner, a
depth estimator and a UNet taking a vector ``y``, plus the tiny configs themselves."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

TEXT_DIM = 16


class TinyTextEncoder(nn.Module):
    """Captions → ``(B, 3, TEXT_DIM)``: a learned embedding of the first three characters (code points mod 128)."""

    def __init__(self, dim: int = TEXT_DIM, tokens: int = 3):
        super().__init__()
        self.tokens = tokens
        self.embedding = nn.Embedding(128, dim)

    def forward(self, text: list[str]) -> torch.Tensor:
        ids = [[ord(ch) % 128 for ch in caption[: self.tokens].ljust(self.tokens, "\0")] for caption in text]
        return self.embedding(torch.tensor(ids, device=self.embedding.weight.device))

    def encode(self, text: list[str]) -> torch.Tensor:
        return self(text)


class TinyDepth(nn.Module):
    """Depth stand-in with the MiDaS interface: ``(B, 3, H, W)`` in [-1, 1] → ``(B, 1, H/2, W/2)``."""

    def __init__(self, model_type: str = "tiny"):
        super().__init__()
        self.model_type = model_type
        self.proj = nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.proj(x), 2)


class AdmUNet(nn.Module):
    """A UNet stand-in using every input: ε̂ = conv(x) + W y + mean(context) (per sample, broadcast)."""

    def __init__(self, in_channels: int = 4, out_channels: int = 4, adm_in_channels: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.adm = nn.Linear(adm_in_channels, out_channels)

    def forward(self, x, timesteps, context=None, y=None):
        out = self.conv(x) + self.adm(y)[:, :, None, None]
        return out + context.mean(dim=(1, 2))[:, None, None, None]


AUTOENCODER = {
    "target": "ldm.models.autoencoder.AutoencoderKL",
    "params": {
        "embed_dim": 4,
        "ddconfig": {
            "double_z": True, "z_channels": 4, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
        },
        "lossconfig": {"target": "torch.nn.Identity"},
    },
}


def unet(in_channels: int, **extra: Any) -> dict[str, Any]:
    """A tiny ``UNetModel`` with cross-attention to TEXT_DIM features."""
    params = {
        "image_size": 8, "in_channels": in_channels, "out_channels": 4, "model_channels": 32,
        "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 2], "num_heads": 2,
        "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": TEXT_DIM, "legacy": False,
    }
    params.update(extra)
    return {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": params}


def common(**extra: Any) -> dict[str, Any]:
    """The LatentDiffusion parameters every tiny SD 2.x model shares (16 px images, 8 px latents)."""
    params = {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "first_stage_key": "jpg",
        "cond_stage_key": "txt", "image_size": 8, "channels": 4, "cond_stage_trainable": False,
        "scale_factor": 0.18215, "use_ema": False, "log_every_t": 500,
        "first_stage_config": copy.deepcopy(AUTOENCODER),
        "cond_stage_config": {"target": "tests.sd2_fakes.TinyTextEncoder"},
    }
    params.update(extra)
    return params


def inpaint_params(**extra: Any) -> dict[str, Any]:
    return common(**{"conditioning_key": "hybrid", "finetune_keys": None, "unet_config": unet(9), **extra})


def depth_params(**extra: Any) -> dict[str, Any]:
    depth = {"target": "tests.sd2_fakes.TinyDepth", "params": {"model_type": "tiny"}}
    defaults = {"conditioning_key": "hybrid", "finetune_keys": None, "unet_config": unet(5),
                "depth_stage_config": depth}
    return common(**{**defaults, **extra})


def upscale_params(**extra: Any) -> dict[str, Any]:
    low_scale = {
        "target": "ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation",
        "params": {"noise_schedule_config": {"linear_start": 0.0001, "linear_end": 0.02}, "max_noise_level": 350},
    }
    defaults = {"parameterization": "v", "conditioning_key": "hybrid-adm", "low_scale_key": "lr",
                "low_scale_config": low_scale, "unet_config": unet(7, num_classes=1000)}
    return common(**{**defaults, **extra})


def unclip_params(**extra: Any) -> dict[str, Any]:
    """unCLIP with a 4-wide image embedding and 4-wide level embedding: c_adm ``(B, 8)``."""
    noise_aug = {
        "target": "ldm.modules.encoders.modules.CLIPEmbeddingNoiseAugmentation",
        "params": {
            "timestep_dim": 4,
            "noise_schedule_config": {"timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"},
        },
    }
    defaults = {
        "parameterization": "v", "conditioning_key": "crossattn-adm", "embedding_dropout": 0.25,
        "embedder_config": {"target": "tests.sd2_fakes.TinyImageEmbedder"}, "noise_aug_config": noise_aug,
        "unet_config": {"target": "tests.sd2_fakes.AdmUNet", "params": {}},
    }
    return common(**{**defaults, **extra})


class TinyImageEmbedder(nn.Module):
    """Image embedder stand-in: ``(B, 3, H, W)`` → the channel means and the overall maximum, ``(B, 4)``."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        flat = image.flatten(2)
        return torch.cat([flat.mean(-1), flat.flatten(1).amax(-1, keepdim=True)], dim=1)
