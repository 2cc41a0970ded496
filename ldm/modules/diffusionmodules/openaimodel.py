"""The latent-diffusion UNet (descended from openai/guided-diffusion ``unet.py``).

``UNetModel(x_t (B, C, H, W), t (B,), context (B, M, D), y (B,)) -> (B, out_channels, H, W)``: a time
embedding conditions every ``ResBlock``; ``SpatialTransformer`` (cross-attention to ``context``) or
``AttentionBlock`` (self-attention) sits at the resolutions listed in ``attention_resolutions``.
The blocks live in :mod:`ldm.modules.diffusionmodules.unet_blocks` and the classifier half-UNet in
:mod:`ldm.modules.diffusionmodules.encoder_unet`; both are re-exported here under their original paths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.encoder_unet import EncoderUNetModel
from ldm.modules.diffusionmodules.unet_blocks import (
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    QKVAttention,
    QKVAttentionLegacy,
    ResBlock,
    TimestepBlock,
    TimestepEmbedSequential,
    TransposedUpsample,
    Upsample,
    convert_module_to_f16,
    convert_module_to_f32,
    count_flops_attn,
)
from ldm.modules.diffusionmodules.util import conv_nd, linear, normalization, timestep_embedding, zero_module

__all__ = [
    "AttentionBlock",
    "AttentionPool2d",
    "Downsample",
    "EncoderUNetModel",
    "QKVAttention",
    "QKVAttentionLegacy",
    "ResBlock",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "TransposedUpsample",
    "UNetModel",
    "Upsample",
    "convert_module_to_f16",
    "convert_module_to_f32",
    "count_flops_attn",
]

# --------------------------------------------------------------------------------------------------------
# UNet
# --------------------------------------------------------------------------------------------------------


def _heads_and_dim_head(
    ch: int, num_heads: int, num_head_channels: int, use_spatial_transformer: bool, legacy: bool
) -> tuple[int, int]:
    """The original's ``(num_heads, dim_head)`` for an attention layer of width ``ch``.

    Non-legacy: ``dim_head = ch // num_heads`` or ``num_head_channels`` (then ``num_heads = ch // num_head_channels``).
    Legacy: a SpatialTransformer uses ``ch // num_heads``, an AttentionBlock receives ``num_head_channels`` as is.
    """
    if num_head_channels == -1:
        dim_head = ch // num_heads
    else:
        num_heads = ch // num_head_channels
        dim_head = num_head_channels
    if legacy:
        dim_head = ch // num_heads if use_spatial_transformer else num_head_channels
    return num_heads, dim_head


class UNetModel(nn.Module):
    """The full UNet with timestep embedding, optional class labels and cross-attention.

    ``forward(x (B, in_channels, H, W), timesteps (B,), context (B, M, context_dim), y (B,))``
    -> ``(B, out_channels, H, W)``, or codebook logits ``(B, n_embed, H, W)`` when ``n_embed`` is set.

    :param attention_resolutions: downsampling factors (1, 2, 4, ...) at which attention layers are used.
    :param channel_mult: width multiplier of ``model_channels`` per level; a ×2 down/upsampling between levels.
    :param num_heads / num_head_channels: a fixed head count, or a fixed width per head (-1 = unused).
    :param num_heads_upsample: head count of the decoder-side AttentionBlocks (-1 = ``num_heads``).
    :param use_spatial_transformer: SpatialTransformer (cross-attention to ``context``) instead of AttentionBlock.
    :param checkpoint_transformers: recompute the SpatialTransformer blocks in the backward pass instead of storing
        their activations. The original does so whatever ``use_checkpoint`` says, hence the default; ``false``
        trains faster (12% per step on the demo's UNet) with more activation memory, and the same numbers.
    :param legacy: the original's head-width rule (see :func:`_heads_and_dim_head`).
    :param use_fp16: run the input/middle/output blocks in float16. Deliberate difference: the original's
        ``convert_module_to_f16`` is a no-op, so there ``use_fp16`` only casts the activations (usable under
        autocast alone) and the state dict stays float32; here the torso's conv/linear/layer-norm weights are
        cast to float16 (so they are float16 in the state dict too) and the model runs without autocast.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_spatial_transformer: bool = False,
        transformer_depth: int = 1,
        context_dim: int | None = None,
        n_embed: int | None = None,
        legacy: bool = True,
        checkpoint_transformers: bool = True,
    ) -> None:
        super().__init__()
        if use_spatial_transformer and context_dim is None:
            raise ValueError("UNetModel: use_spatial_transformer needs context_dim (the width of the conditioning).")
        if context_dim is not None and not use_spatial_transformer:
            raise ValueError(
                "UNetModel: context_dim is set but use_spatial_transformer is False; "
                "set use_spatial_transformer: true for cross-attention or drop context_dim."
            )
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("UNetModel: set either num_heads or num_head_channels (both are -1).")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.dtype = torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample
        self.predict_codebook_ids = n_embed is not None

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim)
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        def res_block(ch: int, out_ch: int | None = None, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(
                ch,
                time_embed_dim,
                dropout,
                out_channels=out_ch,
                dims=dims,
                use_checkpoint=use_checkpoint,
                use_scale_shift_norm=use_scale_shift_norm,
                up=up,
                down=down,
            )

        def attention(ch: int, attention_block_heads: int) -> nn.Module:
            heads, dim_head = _heads_and_dim_head(ch, num_heads, num_head_channels, use_spatial_transformer, legacy)
            if use_spatial_transformer:
                return SpatialTransformer(
                    ch,
                    heads,
                    dim_head,
                    depth=transformer_depth,
                    context_dim=context_dim,
                    use_checkpoint=checkpoint_transformers,
                )
            return AttentionBlock(
                ch,
                use_checkpoint=use_checkpoint,
                num_heads=attention_block_heads,
                num_head_channels=dim_head,
                use_new_attention_order=use_new_attention_order,
            )

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3, padding=1))]
        )
        self._feature_size = model_channels
        input_block_chans = [model_channels]
        ch = model_channels
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res_block(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, dims, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                input_block_chans.append(ch)
                ds *= 2
                self._feature_size += ch

        self.middle_block = TimestepEmbedSequential(res_block(ch), attention(ch, num_heads), res_block(ch))
        self._feature_size += ch

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [res_block(ch + ich, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    up = res_block(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, dims, ch)
                    layers.append(up)
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch

        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1))
        )
        if self.predict_codebook_ids:
            self.id_predictor = nn.Sequential(normalization(ch), conv_nd(dims, model_channels, n_embed, 1))
        if use_fp16:
            self.convert_to_fp16()

    def convert_to_fp16(self) -> None:
        """Cast the torso (input, middle and output blocks) to float16; group norms keep computing in float32."""
        self.dtype = torch.float16
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            blocks.apply(convert_module_to_f16)

    def convert_to_fp32(self) -> None:
        """Cast the torso back to float32."""
        self.dtype = torch.float32
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            blocks.apply(convert_module_to_f32)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """``x (B, C, H, W)``, ``timesteps (B,)``, ``context (B, M, D)``, ``y (B,)`` class labels."""
        if timesteps is None:
            raise ValueError("UNetModel.forward needs timesteps, a (B,) tensor of diffusion steps.")
        if (y is not None) != (self.num_classes is not None):
            raise ValueError(
                f"UNetModel has num_classes={self.num_classes} but was called with y="
                f"{'a tensor' if y is not None else 'None'}; pass class labels y if and only if num_classes is set."
            )
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
        if self.num_classes is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"UNetModel: y must have shape ({x.shape[0]},), got {tuple(y.shape)}.")
            emb = emb + self.label_emb(y)

        h = x.type(self.dtype)
        emb = emb.type(self.dtype)
        if context is not None:
            context = context.type(self.dtype)
        hs = []
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        h = h.type(x.dtype)
        return self.id_predictor(h) if self.predict_codebook_ids else self.out(h)
