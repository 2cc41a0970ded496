"""Stable Diffusion v1 weights between our (original CompVis) layout and Hugging Face diffusers' layout.

Three models, key by key and both ways:

- ``UNetModel`` (``model.diffusion_model.*`` without the prefix) ↔ ``UNet2DConditionModel``;
- ``AutoencoderKL`` (``first_stage_model.*`` without the prefix) ↔ diffusers ``AutoencoderKL``;
- ``FrozenCLIPEmbedder`` (``cond_stage_model.*`` without the prefix) ↔ transformers ``CLIPTextModel``.

Each ``*_diffusers_config`` turns one of our modules into the keyword arguments of the diffusers class that
computes the same function, so random weights converted with ``*_to_diffusers`` give equal outputs.
Only the architectures Stable Diffusion v1 uses are supported; others raise a ``ValueError`` naming the option.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.diffusionmodules.openaimodel import ResBlock, UNetModel

StateDict = Mapping[str, torch.Tensor]
Renames = list[tuple[str, str]]

# --------------------------------------------------------------------------------------------------------
# Generic renaming
# --------------------------------------------------------------------------------------------------------

UNET_RESNET = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
]
VAE_RESNET = [("nin_shortcut.", "conv_shortcut.")]
VAE_ATTENTION = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
]
VAE_PARTS = ("encoder", "decoder", "quant_conv", "post_quant_conv")


def _rename(key: str, prefixes: list[tuple[str, str, Renames]]) -> str:
    """Rename ``key`` by the longest matching ``(src_prefix, dst_prefix, suffix_renames)`` entry."""
    best = max((p for p in prefixes if key.startswith(p[0])), key=lambda p: len(p[0]), default=None)
    if best is None:
        raise KeyError(f"no conversion rule for state-dict key {key!r}; is this a Stable Diffusion v1 model?")
    src, dst, suffixes = best
    rest = key[len(src) :]
    for old, new in suffixes:
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            break
    return dst + rest


def _invert(prefixes: list[tuple[str, str, Renames]]) -> list[tuple[str, str, Renames]]:
    return [(dst, src, [(new, old) for old, new in suffixes]) for src, dst, suffixes in prefixes]


def _convert(state_dict: StateDict, prefixes: list[tuple[str, str, Renames]]) -> dict[str, torch.Tensor]:
    return {_rename(key, prefixes): value for key, value in state_dict.items()}


# --------------------------------------------------------------------------------------------------------
# UNet
# --------------------------------------------------------------------------------------------------------


def _res_blocks(unet: UNetModel) -> int:
    """Res blocks per level (``UNetModel.num_res_blocks`` is the per-level list, as in SD 2.x); diffusers needs one
    count for every level."""
    counts = set(unet.num_res_blocks)
    if len(counts) != 1:
        raise ValueError(f"diffusers conversion needs one num_res_blocks for every level, not {unet.num_res_blocks}")
    return counts.pop()


def _unet_levels(unet: UNetModel) -> list[bool]:
    """Whether each resolution level of ``unet`` has attention layers."""
    return [2**level in unet.attention_resolutions for level in range(len(unet.channel_mult))]


def _unet_heads(unet: UNetModel) -> list[int]:
    """The attention head count per level, read off the built SpatialTransformers (the middle block's count for
    levels without attention: diffusers gives the middle block the last level's count)."""
    heads = [unet.middle_block[1].transformer_blocks[0].attn1.heads] * len(unet.channel_mult)
    index = 1
    for level, has_attention in enumerate(_unet_levels(unet)):
        block = unet.input_blocks[index]
        if has_attention:
            heads[level] = block[1].transformer_blocks[0].attn1.heads
        index += _res_blocks(unet) + (level != len(unet.channel_mult) - 1)
    return heads


def _check_unet(unet: UNetModel) -> None:
    resblocks = [m for m in unet.modules() if isinstance(m, ResBlock)]
    if unet.num_classes is not None or unet.predict_codebook_ids:
        raise ValueError("diffusers conversion supports UNets without num_classes and n_embed (SD v1).")
    if any(r.use_scale_shift_norm or r.updown for r in resblocks):
        raise ValueError("diffusers conversion needs use_scale_shift_norm=False and resblock_updown=False (SD v1).")
    if not any(isinstance(m, SpatialTransformer) for m in unet.modules()):
        raise ValueError("diffusers conversion needs use_spatial_transformer=True (SD v1).")


def unet_diffusers_config(unet: UNetModel) -> dict:
    """Keyword arguments of ``diffusers.UNet2DConditionModel`` computing the same function as ``unet``."""
    _check_unet(unet)
    levels = _unet_levels(unet)
    transformer = next(m for m in unet.modules() if isinstance(m, SpatialTransformer))
    attn2 = transformer.transformer_blocks[0].attn2
    return {
        "sample_size": unet.image_size,
        "in_channels": unet.in_channels,
        "out_channels": unet.out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels)],
        "block_out_channels": [unet.model_channels * m for m in unet.channel_mult],
        "layers_per_block": _res_blocks(unet),
        "cross_attention_dim": attn2.to_k.in_features,
        "attention_head_dim": _unet_heads(unet),
        "transformer_layers_per_block": len(transformer.transformer_blocks),
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
        "use_linear_projection": False,
    }


def _unet_prefixes(unet: UNetModel) -> list[tuple[str, str, Renames]]:
    levels = _unet_levels(unet)
    n, last = _res_blocks(unet), len(levels) - 1
    rules: list[tuple[str, str, Renames]] = [
        ("time_embed.0.", "time_embedding.linear_1.", []),
        ("time_embed.2.", "time_embedding.linear_2.", []),
        ("input_blocks.0.0.", "conv_in.", []),
        ("out.0.", "conv_norm_out.", []),
        ("out.2.", "conv_out.", []),
        ("middle_block.0.", "mid_block.resnets.0.", UNET_RESNET),
        ("middle_block.1.", "mid_block.attentions.0.", []),
        ("middle_block.2.", "mid_block.resnets.1.", UNET_RESNET),
    ]
    index = 1
    for level, has_attention in enumerate(levels):
        for j in range(n):
            rules.append((f"input_blocks.{index}.0.", f"down_blocks.{level}.resnets.{j}.", UNET_RESNET))
            if has_attention:
                rules.append((f"input_blocks.{index}.1.", f"down_blocks.{level}.attentions.{j}.", []))
            index += 1
        if level != last:
            rules.append((f"input_blocks.{index}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.", []))
            index += 1
    index = 0
    for up, level in enumerate(reversed(range(len(levels)))):
        for j in range(n + 1):
            rules.append((f"output_blocks.{index}.0.", f"up_blocks.{up}.resnets.{j}.", UNET_RESNET))
            if levels[level]:
                rules.append((f"output_blocks.{index}.1.", f"up_blocks.{up}.attentions.{j}.", []))
            if level and j == n:
                slot = 2 if levels[level] else 1
                rules.append((f"output_blocks.{index}.{slot}.conv.", f"up_blocks.{up}.upsamplers.0.conv.", []))
            index += 1
    return rules


def unet_to_diffusers(unet: UNetModel, state_dict: StateDict | None = None) -> dict[str, torch.Tensor]:
    """``unet``'s state dict (or ``state_dict`` in its layout) in ``UNet2DConditionModel``'s layout."""
    _check_unet(unet)
    return _convert(unet.state_dict() if state_dict is None else state_dict, _unet_prefixes(unet))


def unet_from_diffusers(unet: UNetModel, state_dict: StateDict) -> dict[str, torch.Tensor]:
    """A ``UNet2DConditionModel`` state dict in the layout of ``unet`` (load it with ``strict=True``)."""
    _check_unet(unet)
    return _convert(state_dict, _invert(_unet_prefixes(unet)))


# --------------------------------------------------------------------------------------------------------
# Autoencoder
# --------------------------------------------------------------------------------------------------------


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


def _vae_prefixes(n_levels: int, num_res_blocks: int) -> list[tuple[str, str, Renames]]:
    rules: list[tuple[str, str, Renames]] = [
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
    out = _convert(source, _vae_prefixes(model.encoder.num_resolutions, model.encoder.num_res_blocks))
    return {k: v.flatten(1) if _is_vae_attention_projection(k) else v for k, v in out.items()}


def vae_from_diffusers(model: torch.nn.Module, state_dict: StateDict) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in the layout of our ``model`` (its first-stage keys)."""
    rules = _invert(_vae_prefixes(model.encoder.num_resolutions, model.encoder.num_res_blocks))
    return {
        _rename(k, rules): v[:, :, None, None] if _is_vae_attention_projection(k) else v
        for k, v in state_dict.items()
    }


# --------------------------------------------------------------------------------------------------------
# CLIP text encoder
# --------------------------------------------------------------------------------------------------------


def clip_to_diffusers(state_dict: StateDict, target_keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """``FrozenCLIPEmbedder`` keys ``transformer.text_model.*`` → a ``CLIPTextModel``'s keys.

    transformers 5 keeps its layers at the top (``embeddings.*``), 4.x under ``text_model.*``; ``target_keys``
    (the target model's state-dict keys) decides, default 5.x. The ``position_ids`` buffer is dropped.
    """
    nested = target_keys is not None and any(k.startswith("text_model.") for k in target_keys)
    out = {}
    for key, value in state_dict.items():
        if key.endswith("embeddings.position_ids"):
            continue
        inner = key.removeprefix("transformer.")
        out[inner if nested else inner.removeprefix("text_model.")] = value
    return out
