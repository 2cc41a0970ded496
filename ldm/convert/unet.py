"""The Stable Diffusion UNet between our ``UNetModel`` (``model.diffusion_model.*`` without the prefix) and
diffusers' ``UNet2DConditionModel``: the keyword arguments computing the same function, and the key renames.

SD v1 (conv ``proj_in``/``proj_out``, a fixed head count) and SD 2.x (linear projections, ``num_head_channels``:
diffusers' ``attention_head_dim`` is then the per-level head count) are covered; other architectures raise a
``ValueError`` naming the option.
"""

from __future__ import annotations

import torch

from ldm.convert.rename import Rule, StateDict, convert, invert
from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import ResBlock, UNetModel

UNET_RESNET = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
]


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
        raise ValueError("diffusers conversion supports UNets without num_classes and n_embed (SD v1 and 2.x).")
    if any(r.use_scale_shift_norm or r.updown for r in resblocks):
        raise ValueError(
            "diffusers conversion needs use_scale_shift_norm=False and resblock_updown=False (SD v1 and 2.x)."
        )
    if not any(isinstance(m, SpatialTransformer) for m in unet.modules()):
        raise ValueError("diffusers conversion needs use_spatial_transformer=True (SD v1 and 2.x).")


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
        "use_linear_projection": transformer.use_linear,
    }


def _unet_prefixes(unet: UNetModel) -> list[Rule]:
    levels = _unet_levels(unet)
    n, last = _res_blocks(unet), len(levels) - 1
    rules: list[Rule] = [
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
    return convert(unet.state_dict() if state_dict is None else state_dict, _unet_prefixes(unet))


def unet_from_diffusers(unet: UNetModel, state_dict: StateDict) -> dict[str, torch.Tensor]:
    """A ``UNet2DConditionModel`` state dict in the layout of ``unet`` (load it with ``strict=True``)."""
    _check_unet(unet)
    return convert(state_dict, invert(_unet_prefixes(unet)))

