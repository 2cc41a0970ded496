"""The Stable Diffusion autoencoder between our ``AutoencoderKL`` (``first_stage_model.*`` without the prefix) and
diffusers' ``AutoencoderKL``: the keyword arguments computing the same function, and the key renames."""

from __future__ import annotations

import torch

from ldm.convert.rename import Rule, StateDict, convert, invert, rename
from ldm.modules.diffusionmodules.model import Decoder, Encoder

VAE_RESNET = [("nin_shortcut.", "conv_shortcut.")]
VAE_ATTENTION = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
]
VAE_PARTS = ("encoder", "decoder", "quant_conv", "post_quant_conv")


def _check_vae(encoder: Encoder, decoder: Decoder, embed_dim: int, z_channels: int) -> None:
    if any(len(level.attn) for level in (*encoder.down, *decoder.up)):
        raise ValueError("diffusers conversion needs ddconfig.attn_resolutions: [] (attention only in the middle).")
    if embed_dim != z_channels:
        raise ValueError(
            f"diffusers conversion needs embed_dim == ddconfig.z_channels, got {embed_dim} != {z_channels}."
        )


def vae_diffusers_config(model: torch.nn.Module) -> dict:
    """Keyword arguments of ``diffusers.AutoencoderKL`` computing the same function as our ``model``."""
    encoder, decoder = model.encoder, model.decoder
    z_channels = decoder.conv_in.in_channels
    _check_vae(encoder, decoder, model.quant_conv.out_channels // 2, z_channels)
    n_levels = encoder.num_resolutions
    return {
        "in_channels": encoder.in_channels,
        "out_channels": decoder.conv_out.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n_levels,
        "up_block_types": ["UpDecoderBlock2D"] * n_levels,
        "block_out_channels": [level.block[-1].out_channels for level in encoder.down],
        "layers_per_block": encoder.num_res_blocks,
        "latent_channels": z_channels,
        "norm_num_groups": 32,
        "sample_size": encoder.resolution,
    }


def _vae_prefixes(n_levels: int, num_res_blocks: int) -> list[Rule]:
    rules: list[Rule] = [
        ("quant_conv.", "quant_conv.", []),
        ("post_quant_conv.", "post_quant_conv.", []),
    ]
    for part in ("encoder", "decoder"):
        rules += [
            (f"{part}.conv_in.", f"{part}.conv_in.", []),
            (f"{part}.conv_out.", f"{part}.conv_out.", []),
            (f"{part}.norm_out.", f"{part}.conv_norm_out.", []),
            (f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0.", VAE_RESNET),
            (f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0.", VAE_ATTENTION),
            (f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1.", VAE_RESNET),
        ]
    for level in range(n_levels):
        for j in range(num_res_blocks):
            rules.append((f"encoder.down.{level}.block.{j}.", f"encoder.down_blocks.{level}.resnets.{j}.", VAE_RESNET))
        rules.append((f"encoder.down.{level}.downsample.", f"encoder.down_blocks.{level}.downsamplers.0.", []))
        up = n_levels - 1 - level
        for j in range(num_res_blocks + 1):
            rules.append((f"decoder.up.{level}.block.{j}.", f"decoder.up_blocks.{up}.resnets.{j}.", VAE_RESNET))
        rules.append((f"decoder.up.{level}.upsample.", f"decoder.up_blocks.{up}.upsamplers.0.", []))
    return rules


def _is_vae_attention_projection(diffusers_key: str) -> bool:
    return ".attentions." in diffusers_key and diffusers_key.endswith(".weight") and "group_norm" not in diffusers_key


def vae_to_diffusers(model: torch.nn.Module, state_dict: StateDict | None = None) -> dict[str, torch.Tensor]:
    """Our ``AutoencoderKL`` weights (``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``) in
    diffusers' layout; the attention's 1x1 convs ``(C, C, 1, 1)`` become linear weights ``(C, C)``."""
    vae_diffusers_config(model)
    source = model.state_dict() if state_dict is None else state_dict
    source = {k: v for k, v in source.items() if k.split(".")[0] in VAE_PARTS}
    out = convert(source, _vae_prefixes(model.encoder.num_resolutions, model.encoder.num_res_blocks))
    return {k: v.flatten(1) if _is_vae_attention_projection(k) else v for k, v in out.items()}


def vae_from_diffusers(model: torch.nn.Module, state_dict: StateDict) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in the layout of our ``model`` (its first-stage keys)."""
    rules = invert(_vae_prefixes(model.encoder.num_resolutions, model.encoder.num_res_blocks))
    return {
        rename(k, rules): v[:, :, None, None] if _is_vae_attention_projection(k) else v
        for k, v in state_dict.items()
    }

