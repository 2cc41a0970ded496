"""The latent-diffusion UNet.

``UNetModel(x_t (B, C, H, W), t (B,), context (B, M, D), y (B,)) -> (B, out_channels, H, W)``: a time
embedding conditions every ``ResBlock``; ``SpatialTransformer`` (cross-attention to ``context``) or
``AttentionBlock`` (self-attention) sits at the resolutions listed in ``attention_resolutions``.
The blocks and the level plan live in :mod:`ldm.modules.diffusionmodules.unet_blocks`, the classifier half-UNet
in :mod:`ldm.modules.diffusionmodules.encoder_unet`, names no model builds in :mod:`ldm.legacy.unet_extras`;
all are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ldm.legacy.unet_extras import TransposedUpsample, count_flops_attn
from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.encoder_unet import EncoderUNetModel
from ldm.modules.diffusionmodules.unet_blocks import (
    FP16_LAYERS,
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    QKVAttention,
    QKVAttentionLegacy,
    ResBlock,
    TimestepBlock,
    TimestepEmbedSequential,
    Upsample,
    cast_torso,
    convert_module_to_f16,
    convert_module_to_f32,
)
from ldm.modules.diffusionmodules.unet_plan import (
    UNetParts,
    build_torso,
    decoder_stages,
    level_plan,
    time_embedding_mlp,
)
from ldm.modules.diffusionmodules.util import conv_nd, linear, normalization, timestep_embedding, zero_module
from ldm.util import SettingError

__all__ = [
    "AttentionBlock",
    "AttentionPool2d",
    "Downsample",
    "EncoderUNetModel",
    "QKVAttention",
    "QKVAttentionLegacy",
    "ResBlock",
    "Timestep",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "TransposedUpsample",
    "UNetModel",
    "Upsample",
    "convert_module_to_f16",
    "convert_module_to_f32",
    "count_flops_attn",
]


class Timestep(nn.Module):
    """The sinusoidal embedding of :func:`timestep_embedding` as a module: ``t (B,) -> (B, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim)


def _heads_and_dim_head(
    ch: int, num_heads: int, num_head_channels: int, use_spatial_transformer: bool, legacy: bool
) -> tuple[int, int]:
    """``(heads, width per head)`` of an attention layer ``ch`` channels wide.

    Non-legacy: ``num_heads`` heads of ``ch // num_heads``, or heads of ``num_head_channels`` (when not -1).
    Legacy: a SpatialTransformer's head width is ``ch // heads``; an AttentionBlock is handed
    ``num_head_channels`` unchanged (so -1 there means "use its num_heads").
    """
    heads = num_heads if num_head_channels == -1 else ch // num_head_channels
    if not legacy:
        return heads, ch // heads if num_head_channels == -1 else num_head_channels
    return heads, ch // heads if use_spatial_transformer else num_head_channels


@dataclass(frozen=True)
class _UNetAttention:
    """Makes the UNet's attention layer for a given width: a SpatialTransformer or an AttentionBlock
    (whose head count on the decoder side is ``num_heads_upsample``)."""

    num_heads: int
    num_head_channels: int
    num_heads_upsample: int
    use_checkpoint: bool
    use_new_attention_order: bool
    use_spatial_transformer: bool
    transformer_depth: int
    context_dim: int | list[int] | None
    checkpoint_transformers: bool
    legacy: bool
    use_linear: bool = False

    def __call__(self, width: int, decoder: bool, disable_self_attn: bool = False) -> nn.Module:
        heads, head_width = _heads_and_dim_head(
            width, self.num_heads, self.num_head_channels, self.use_spatial_transformer, self.legacy
        )
        if self.use_spatial_transformer:
            return SpatialTransformer(
                width,
                heads,
                head_width,
                depth=self.transformer_depth,
                context_dim=self.context_dim,
                disable_self_attn=disable_self_attn,
                use_linear=self.use_linear,
                use_checkpoint=self.checkpoint_transformers,
            )
        return AttentionBlock(
            width,
            num_heads=self.num_heads_upsample if decoder else self.num_heads,
            num_head_channels=head_width,
            use_checkpoint=self.use_checkpoint,
            use_new_attention_order=self.use_new_attention_order,
        )


#: ``num_classes`` values that are not a class count: the kind of ``y`` the label embedding maps.
LABEL_KINDS = ("continuous", "sequential")


def label_embedding(num_classes: int | str, adm_in_channels: int | None, width: int) -> nn.Module:
    """The map from ``y`` to a ``(B, width)`` vector added to the time embedding.

    An int ``num_classes``: ``nn.Embedding`` of ``y (B,)`` int64 (class labels, or the x4 upscaler's noise level);
    ``"continuous"``: ``Linear(1, width)`` of ``y (B, 1)``; ``"sequential"``: ``Linear → SiLU → Linear`` of
    ``y (B, adm_in_channels)`` (unCLIP's image embedding), nested in a one-layer ``Sequential`` (keys
    ``label_emb.0.0.*`` / ``label_emb.0.2.*``).
    """
    if isinstance(num_classes, int) and not isinstance(num_classes, bool):
        return nn.Embedding(num_classes, width)
    if num_classes == "continuous":
        return nn.Linear(1, width)
    if num_classes == "sequential":
        if adm_in_channels is None:
            raise SettingError(
                'UNetModel: num_classes "sequential" needs adm_in_channels, the width of the vector y it embeds.'
            )
        return nn.Sequential(nn.Sequential(linear(adm_in_channels, width), nn.SiLU(), linear(width, width)))
    raise SettingError(
        f"UNetModel: num_classes={num_classes!r} is neither a class count nor one of {LABEL_KINDS}; use an int, "
        '"continuous" (y of shape (B, 1)) or "sequential" with adm_in_channels.'
    )


def _expected_label_shape(num_classes: int | str, adm_in_channels: int | None, batch: int) -> tuple[int, ...]:
    if num_classes == "continuous":
        return (batch, 1)
    if num_classes == "sequential":
        return (batch, adm_in_channels)
    return (batch,)


def _check_unet_arguments(use_spatial_transformer: bool, context_dim: int | Sequence[int] | None, num_heads: int,
                          num_head_channels: int) -> None:
    rules = (
        (use_spatial_transformer and context_dim is None,
         "use_spatial_transformer needs context_dim, the width of the conditioning tokens."),
        (context_dim is not None and not use_spatial_transformer,
         "context_dim is set but use_spatial_transformer is False; set use_spatial_transformer: true for "
         "cross-attention, or drop context_dim."),
        (num_heads == -1 and num_head_channels == -1,
         "num_heads and num_head_channels are both -1; set num_heads or num_head_channels."),
    )
    for broken, message in rules:
        if broken:
            raise SettingError(f"UNetModel: {message}")


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
        their activations (whatever ``use_checkpoint`` says); ``false`` trains faster with more activation memory,
        and the same numbers.
    :param legacy: the head-width rule of :func:`_heads_and_dim_head`.
    :param num_res_blocks: ResBlocks per input level (one more per output level): one count, or one per level.
    :param num_classes: ``y`` conditioning added to the time embedding, see :func:`label_embedding`: a class count
        (``y (B,)`` int64), ``"continuous"`` (``y (B, 1)``) or ``"sequential"`` (``y (B, adm_in_channels)``).
    :param use_linear_in_transformer: the SpatialTransformers project in and out with ``nn.Linear`` on the tokens
        instead of 1x1 convs.
    :param transformer_depth: transformer blocks per SpatialTransformer, all attending to the same ``context``
        (or, with a list ``context_dim`` and a list ``context``, block ``i`` to entry ``i``).
    :param disable_self_attentions: per level, whether its transformer blocks replace self-attention by a second
        cross-attention to ``context``; ``disable_middle_self_attn`` the same for the middle block.
    :param num_attention_blocks: per level, how many of its stages (counted from the first, in the encoder and in
        the decoder alike) get an attention layer; it only removes attention that ``attention_resolutions`` asks
        for, never adds any.
    :param use_fp16 / use_bf16: the half precision the model is meant to run in, kept as ``self.dtype``
        (bfloat16 wins when both are set). The weights stay float32 (the checkpoints' dtype). The rule: the torso
        (input, middle and output blocks) computes in the dtype of its weights; with float32 weights it computes in
        ``self.dtype`` only on a device that runs that dtype (CUDA; bfloat16 where the GPU supports it), under
        autocast, and only when no autocast is active already (then that autocast decides). On the CPU and MPS
        the forward is float32, the same numbers as with ``use_fp16: false``. ``convert_to_fp16()`` casts the
        torso's weights to float16 (group norms keep computing in float32), after which it computes in float16
        on any device. Input and output stay in the caller's dtype.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int | Sequence[int],
        attention_resolutions: Sequence[int],
        dropout: float = 0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        use_bf16: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_spatial_transformer: bool = False,
        transformer_depth: int = 1,
        context_dim: int | Sequence[int] | None = None,
        n_embed: int | None = None,
        legacy: bool = True,
        disable_self_attentions: Sequence[bool] | None = None,
        num_attention_blocks: Sequence[int] | None = None,
        disable_middle_self_attn: bool = False,
        use_linear_in_transformer: bool = False,
        adm_in_channels: int | None = None,
        checkpoint_transformers: bool = True,
    ) -> None:
        super().__init__()
        _check_unet_arguments(use_spatial_transformer, context_dim, num_heads, num_head_channels)
        if context_dim is not None and not isinstance(context_dim, int):
            context_dim = list(context_dim)  # an OmegaConf ListConfig from a YAML config
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        levels = level_plan(model_channels, channel_mult, attention_resolutions, num_res_blocks,
                            num_attention_blocks, disable_self_attentions)
        # geometry
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.model_channels, self.channel_mult = model_channels, channel_mult
        self.num_res_blocks = [level.res_blocks for level in levels]
        self.attention_resolutions, self.conv_resample = attention_resolutions, conv_resample
        # attention heads
        self.num_heads, self.num_head_channels, self.num_heads_upsample = num_heads, num_head_channels, heads_up
        # training, precision and conditioning
        self.dropout, self.use_checkpoint = dropout, use_checkpoint
        self.dtype = torch.bfloat16 if use_bf16 else torch.float16 if use_fp16 else torch.float32
        self.num_classes, self.adm_in_channels = num_classes, adm_in_channels
        self.predict_codebook_ids = n_embed is not None

        self.time_embed = time_embedding_mlp(model_channels)
        if num_classes is not None:
            self.label_emb = label_embedding(num_classes, adm_in_channels, 4 * model_channels)

        attention = _UNetAttention(
            num_heads, num_head_channels, heads_up, use_checkpoint, use_new_attention_order,
            use_spatial_transformer, transformer_depth, context_dim, checkpoint_transformers, legacy,
            use_linear_in_transformer,
        )
        parts = UNetParts(4 * model_channels, dropout, dims, use_checkpoint, use_scale_shift_norm, resblock_updown,
                          conv_resample, attention)
        self.input_blocks, self.middle_block, widths = build_torso(
            parts, in_channels, model_channels, levels, disable_middle_self_attn=disable_middle_self_attn
        )
        decoder = decoder_stages(model_channels, levels)
        self.output_blocks = nn.ModuleList(parts.stage(spec, decoder=True) for spec in decoder)
        self._feature_size = sum(widths) + sum(spec.c_out for spec in decoder)

        final = decoder[-1].c_out
        self.out = nn.Sequential(
            normalization(final), nn.SiLU(), zero_module(conv_nd(dims, final, out_channels, 3, padding=1))
        )
        if n_embed is not None:
            self.id_predictor = nn.Sequential(normalization(final), conv_nd(dims, final, n_embed, 1))

    def _torso(self) -> tuple[nn.Module, ...]:
        return self.input_blocks, self.middle_block, self.output_blocks

    def convert_to_fp16(self) -> None:
        """Cast the torso (input, middle and output blocks) to float16; group norms keep computing in float32."""
        self.dtype = torch.float16
        cast_torso(self._torso(), self.dtype)

    def convert_to_fp32(self) -> None:
        """Cast the torso back to float32."""
        self.dtype = torch.float32
        cast_torso(self._torso(), self.dtype)

    def _torso_dtype(self) -> torch.dtype:
        """The dtype of the torso's weights: that of its first conv or linear layer still holding one as a tensor
        (an inference swap such as a packed conv may hold its weight otherwise); float32 if there is none."""
        for block in self._torso():
            for module in block.modules():
                weight = getattr(module, "weight", None)
                if isinstance(module, FP16_LAYERS) and isinstance(weight, torch.Tensor):
                    return weight.dtype
        return torch.float32

    def _autocast_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The half dtype to autocast the torso to under the precision rule of the class docstring, or None."""
        device = x.device.type
        if self.dtype == torch.float32 or device != "cuda" or self._torso_dtype() != torch.float32:
            return None
        if torch.is_autocast_enabled(device):
            return None
        if self.dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return None
        return self.dtype

    def _check_inputs(self, x: torch.Tensor, timesteps: torch.Tensor | None, y: torch.Tensor | None) -> None:
        if timesteps is None:
            raise ValueError("UNetModel.forward needs timesteps, a (B,) tensor of diffusion steps.")
        if (y is None) != (self.num_classes is None):
            given = "None" if y is None else "a tensor"
            raise SettingError(
                f"UNetModel has num_classes={self.num_classes} but got y={given}; y goes with num_classes, and only "
                "with it."
            )
        if y is None:
            return
        expected = _expected_label_shape(self.num_classes, self.adm_in_channels, x.shape[0])
        if tuple(y.shape) != expected:
            raise SettingError(
                f"UNetModel with num_classes={self.num_classes!r}: y must have shape {expected} (one row per sample); "
                f"got {tuple(y.shape)}."
            )

    def _embedding(self, timesteps: torch.Tensor, y: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """``(B, 4·model_channels)`` in ``dtype``: the time MLP of the sinusoidal features of ``timesteps``, plus
        the label embedding of ``y`` when the model has ``num_classes``."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
        return (emb if y is None else emb + self.label_emb(y)).type(dtype)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | None = None,
        context: torch.Tensor | Sequence[torch.Tensor] | None = None,
        y: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """``x (B, C, H, W)``, ``timesteps (B,)``, ``context (B, M, D)`` (or a list: one tensor for every
        transformer block, or one per block), ``y`` as ``num_classes`` says; other keyword arguments are ignored.
        Precision: see the class docstring."""
        self._check_inputs(x, timesteps, y)
        half = self._autocast_dtype(x)
        if half is None:
            return self._forward(x, timesteps, context, y, self._torso_dtype())
        with torch.autocast(x.device.type, dtype=half):
            return self._forward(x, timesteps, context, y, torch.float32)

    def _forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | Sequence[torch.Tensor] | None,
        y: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        emb = self._embedding(timesteps, y, dtype)  # (B, 4·model_channels)
        if isinstance(context, torch.Tensor):
            ctx = context.type(dtype)  # (B, M, D)
        else:
            ctx = None if context is None else [c if c is None else c.type(dtype) for c in context]
        h = x.type(dtype)  # (B, C, H, W)
        skips = []  # each input block's output, consumed last-in first-out by the output blocks
        for block in self.input_blocks:
            h = block(h, emb, ctx)  # (B, model_channels·mult, H/2^level, W/2^level)
            skips.append(h)
        h = self.middle_block(h, emb, ctx)  # (B, model_channels·channel_mult[-1], H/2^L, W/2^L)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)  # (B, width + skip width, H/2^level, W/2^level)
            h = block(h, emb, ctx)  # (B, model_channels·mult, H/2^level', W/2^level')
        h = h.type(x.dtype)  # (B, model_channels·channel_mult[0], H, W)
        head = self.id_predictor if self.predict_codebook_ids else self.out
        return head(h)  # (B, out_channels, H, W) or (B, n_embed, H, W)
