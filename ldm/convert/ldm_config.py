"""The ``LatentDiffusion`` config of a diffusers Stable Diffusion pipeline, from its component configs.

The shipped ``configs/stable-diffusion`` file of the family is the template (v1: CLIP ViT-L; 2.x: OpenCLIP, eps or
v); the UNet, autoencoder and noise-schedule values are then taken from the pipeline, so that the config builds
exactly the converted weights (for the released models the template's values come back).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "stable-diffusion"
SD_CONFIGS = {"v1": "v1-inference.yaml", "v2": "v2-inference.yaml", "v2-v": "v2-inference-v.yaml"}
BETA_SCHEDULES = {"scaled_linear": "linear", "squaredcos_cap_v2": "cosine"}


def _per_level(value: Any, levels: int) -> list[int]:
    return list(value) if isinstance(value, list | tuple) else [value] * levels


def _unet_params(unet: Mapping[str, Any], template: DictConfig) -> dict[str, Any]:
    """``UNetModel`` arguments of a ``UNet2DConditionModel`` config; heads as ``num_head_channels`` when the
    template uses it and every level has the same head width, else as one ``num_heads``."""
    widths = list(unet["block_out_channels"])
    base, levels = widths[0], len(widths)
    heads = _per_level(unet.get("num_attention_heads") or unet["attention_head_dim"], levels)
    depth = set(_per_level(unet.get("transformer_layers_per_block", 1), levels))
    if len(depth) != 1:
        raise ValueError(f"transformer_layers_per_block {depth} differs per level; UNetModel needs one depth")
    head_widths = {w // h for w, h in zip(widths, heads, strict=True)}
    params: dict[str, Any] = {
        "image_size": unet["sample_size"],
        "in_channels": unet["in_channels"],
        "out_channels": unet["out_channels"],
        "model_channels": base,
        "attention_resolutions": [2**i for i, t in enumerate(unet["down_block_types"]) if "CrossAttn" in t][::-1],
        "num_res_blocks": unet["layers_per_block"],
        "channel_mult": [w // base for w in widths],
        "context_dim": unet["cross_attention_dim"],
        "transformer_depth": depth.pop(),
        "use_linear_in_transformer": bool(unet.get("use_linear_projection", False)),
    }
    if template.get("num_head_channels", -1) != -1 and len(head_widths) == 1:
        params.update(num_head_channels=head_widths.pop(), num_heads=-1)
    elif len(set(heads)) == 1:
        params.update(num_heads=heads[0], num_head_channels=-1)
    else:
        raise ValueError(f"attention heads {heads} per level fit neither one num_heads nor one num_head_channels")
    return params


def _vae_params(vae: Mapping[str, Any]) -> dict[str, Any]:
    widths = list(vae["block_out_channels"])
    return {
        "z_channels": vae["latent_channels"],
        "resolution": vae["sample_size"],
        "in_channels": vae["in_channels"],
        "out_ch": vae["out_channels"],
        "ch": widths[0],
        "ch_mult": [w // widths[0] for w in widths],
        "num_res_blocks": vae["layers_per_block"],
        "attn_resolutions": [],
    }


def ldm_config_from_diffusers(
    unet: Mapping[str, Any],
    vae: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    is_openclip: bool,
    openclip_arch: str = "ViT-H-14",
) -> DictConfig:
    """The config (``model: {target, params}``) building the pipeline's UNet, autoencoder and schedule."""
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"scheduler prediction_type {prediction!r} is not one of 'epsilon', 'v_prediction'")
    schedule = scheduler.get("beta_schedule", "scaled_linear")
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"scheduler beta_schedule {schedule!r} is not one of {sorted(BETA_SCHEDULES)}")
    family = "v1" if not is_openclip else ("v2-v" if prediction == "v_prediction" else "v2")
    if family == "v1" and prediction == "v_prediction":
        raise ValueError("a CLIP ViT-L pipeline with prediction_type v_prediction has no original config")
    config = OmegaConf.load(CONFIGS / SD_CONFIGS[family])
    params = config.model.params
    params.unet_config.params.update(_unet_params(unet, params.unet_config.params))
    params.first_stage_config.params.ddconfig.update(_vae_params(vae))
    params.first_stage_config.params.embed_dim = vae["latent_channels"]
    params.update(
        image_size=unet["sample_size"],
        channels=unet["in_channels"],
        scale_factor=float(vae.get("scaling_factor", params.scale_factor)),
        timesteps=scheduler.get("num_train_timesteps", 1000),
        linear_start=float(scheduler.get("beta_start", params.linear_start)),
        linear_end=float(scheduler.get("beta_end", params.linear_end)),
    )
    if BETA_SCHEDULES[schedule] != "linear":
        params.beta_schedule = BETA_SCHEDULES[schedule]
    if is_openclip:
        params.cond_stage_config.params.arch = openclip_arch
    return config
