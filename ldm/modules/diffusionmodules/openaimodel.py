"""The latent-diffusion UNet (descended from openai/guided-diffusion ``unet.py``) and its blocks.

``UNetModel(x_t (B, C, H, W), t (B,), context (B, M, D), y (B,)) -> (B, out_channels, H, W)``: a time
embedding conditions every ``ResBlock``; ``SpatialTransformer`` (cross-attention to ``context``) or
``AttentionBlock`` (self-attention) sits at the resolutions listed in ``attention_resolutions``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.util import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)

# --------------------------------------------------------------------------------------------------------
# Sequential containers
# --------------------------------------------------------------------------------------------------------


class TimestepBlock(nn.Module):
    """A module whose ``forward`` takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the module to ``x`` given the timestep embeddings ``emb (B, E)``."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """``nn.Sequential`` that hands ``emb`` to ``TimestepBlock``s and ``context`` to ``SpatialTransformer``s."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


# --------------------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------------------


def _check_channels(x: torch.Tensor, channels: int, layer: str) -> None:
    if x.shape[1] != channels:
        raise ValueError(f"{layer} expects {channels} input channels, got a tensor of shape {tuple(x.shape)}")


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling (the inner two dims for ``dims=3``), optionally followed by a 3x3 conv."""

    def __init__(
        self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None, padding: int = 1
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, self.channels, "Upsample")
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """×2 downsampling (the inner two dims for ``dims=3``) by a strided 3x3 conv or average pooling."""

    def __init__(
        self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None, padding: int = 1
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=padding)
        elif self.channels != self.out_channels:
            raise ValueError(
                f"Downsample without a conv cannot change channels ({channels} -> {out_channels}); "
                "set use_conv=True (conv_resample in UNetModel) or keep out_channels equal to channels."
            )
        else:
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, self.channels, "Downsample")
        return self.op(x)


# --------------------------------------------------------------------------------------------------------
# Residual block
# --------------------------------------------------------------------------------------------------------


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding ``emb (B, E)``.

    ``h = in_layers(x)`` (norm, SiLU, [up/down], conv); then either ``h + emb_layers(emb)`` or, with
    ``use_scale_shift_norm``, ``norm(h)·(1 + scale) + shift``; ``out_layers`` (SiLU, dropout, zero-init conv);
    output ``skip(x) + h``, where ``skip`` is identity, a 3x3 conv (``use_conv``) or a 1x1 conv.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x (B, channels, ...)``, ``emb (B, emb_channels)`` -> ``(B, out_channels, ...)``."""
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_conv(self.h_upd(in_rest(x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *((1,) * (h.ndim - emb_out.ndim)))
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


# --------------------------------------------------------------------------------------------------------
# Self-attention block
# --------------------------------------------------------------------------------------------------------


class QKVAttentionLegacy(nn.Module):
    """Attention on packed ``qkv (B, heads·3·ch, T)``, split per head first ("legacy" order) -> ``(B, heads·ch, T)``.

    ``softmax(Qᵀ K / √ch) Vᵀ`` per head, via scaled_dot_product_attention.
    """

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        qkv = rearrange(qkv, "b w t -> b t w").contiguous()
        q, k, v = rearrange(qkv, "b t (h three c) -> three b h t c", h=self.n_heads, three=3)
        out = F.scaled_dot_product_attention(q, k, v)
        return rearrange(out, "b h t c -> b (h c) t")


class QKVAttention(nn.Module):
    """Attention on packed ``qkv (B, 3·heads·ch, T)``, split into q, k, v first ("new" order) -> ``(B, heads·ch, T)``.

    ``softmax(Qᵀ K / √ch) Vᵀ`` per head, via scaled_dot_product_attention.
    """

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        qkv = rearrange(qkv, "b w t -> b t w").contiguous()
        q, k, v = rearrange(qkv, "b t (three h c) -> three b h t c", h=self.n_heads, three=3)
        out = F.scaled_dot_product_attention(q, k, v)
        return rearrange(out, "b h t c -> b (h c) t")


class AttentionBlock(nn.Module):
    """Self-attention over the positions of ``(B, C, ...)``: ``x + proj_out(attention(qkv(norm(x))))``.

    The head count is ``num_heads``, or ``channels // num_head_channels`` when that is not -1.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        elif channels % num_head_channels:
            raise ValueError(
                f"AttentionBlock: channels {channels} is not divisible by num_head_channels {num_head_channels}; "
                "choose num_head_channels (or model_channels/channel_mult) so that it divides every width."
            )
        else:
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads) if use_new_attention_order else QKVAttentionLegacy(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


# --------------------------------------------------------------------------------------------------------
# fp16 conversion
# --------------------------------------------------------------------------------------------------------

_FP16_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.LayerNorm)


def convert_module_to_f16(module: nn.Module) -> None:
    """Cast the parameters of a conv / linear / layer-norm layer to float16 (group norms stay float32)."""
    if isinstance(module, _FP16_LAYERS):
        module.to(torch.float16)


def convert_module_to_f32(module: nn.Module) -> None:
    """Undo :func:`convert_module_to_f16`."""
    if isinstance(module, _FP16_LAYERS):
        module.to(torch.float32)


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
    :param legacy: the original's head-width rule (see :func:`_heads_and_dim_head`).
    :param use_fp16: run the input/middle/output blocks in float16.
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
                return SpatialTransformer(ch, heads, dim_head, depth=transformer_depth, context_dim=context_dim)
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
