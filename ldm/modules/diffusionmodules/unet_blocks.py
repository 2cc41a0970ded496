"""Building blocks of the diffusion UNet (the plan that stacks them: :mod:`~ldm.modules.diffusionmodules.unet_plan`).

- containers: :class:`TimestepBlock`, :class:`TimestepEmbedSequential` (routes the time embedding and the
  cross-attention context to the layers that take them);
- ×2 resampling: :class:`Upsample`, :class:`Downsample`;
- :class:`ResBlock`, the residual block conditioned on the time embedding;
- self-attention: :class:`AttentionBlock` over packed ``qkv`` (:class:`QKVAttention`,
  :class:`QKVAttentionLegacy`), and :class:`AttentionPool2d`;
- float16 casting of the torso (:func:`convert_module_to_f16`, :func:`convert_module_to_f32`).

``ldm.modules.diffusionmodules.openaimodel`` re-exports the public names.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.legacy.unet_extras import ThopAttentionCounter
from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.util import avg_pool_nd, checkpoint, conv_nd, linear, normalization, zero_module
from ldm.util import SettingError

# --------------------------------------------------------------------------------------------------------
# Sequential containers
# --------------------------------------------------------------------------------------------------------


class TimestepBlock(nn.Module):
    """A module whose ``forward`` takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the module to ``x`` given the timestep embeddings ``emb (B, E)``."""


def _apply_layer(layer: nn.Module, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """Call ``layer`` with the inputs it takes: ``(x, emb)``, ``(x, context)`` or ``x`` alone."""
    if isinstance(layer, SpatialTransformer):
        return layer(x, context)
    return layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """``nn.Sequential`` whose ``TimestepBlock``s also get ``emb`` and whose ``SpatialTransformer``s get
    ``context``; every other layer gets the running tensor only."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = _apply_layer(layer, x, emb, context)
        return x


# --------------------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------------------


def _check_channels(x: torch.Tensor, channels: int, layer: str) -> None:
    if x.shape[1] != channels:
        raise SettingError(f"{layer} expects {channels} input channels, got a tensor of shape {tuple(x.shape)}")


def _factor(dims: int) -> int | tuple[int, int, int]:
    """The ×2 resampling factor per spatial dim: all of them, except the outer (time) dim of 3-D signals."""
    return (1, 2, 2) if dims == 3 else 2


class _Resampler(nn.Module):
    """What ``Upsample`` and ``Downsample`` share: widths, the conv switch, the number of spatial dims."""

    def __init__(self, channels: int, use_conv: bool, dims: int, out_channels: int | None) -> None:
        super().__init__()
        self.channels, self.out_channels = channels, out_channels or channels
        self.use_conv, self.dims = use_conv, dims


class Upsample(_Resampler):
    """Nearest-neighbour ×2 upsampling (the inner two dims for ``dims=3``), then a 3x3 conv if ``use_conv``.

    ``(B, channels, H, W) -> (B, out_channels, 2H, 2W)``; without the conv the width stays ``channels``.
    """

    def __init__(
        self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None, padding: int = 1
    ) -> None:
        super().__init__(channels, use_conv, dims, out_channels)
        if use_conv:
            self.conv = conv_nd(dims, channels, self.out_channels, 3, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, self.channels, "Upsample")
        x = F.interpolate(x, scale_factor=_factor(self.dims), mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(_Resampler):
    """×2 downsampling (the inner two dims for ``dims=3``): a stride-2 3x3 conv if ``use_conv``, otherwise a
    2x2 average (which cannot change the width). ``(B, channels, H, W) -> (B, out_channels, H/2, W/2)``."""

    def __init__(
        self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None, padding: int = 1
    ) -> None:
        super().__init__(channels, use_conv, dims, out_channels)
        step = _factor(dims)
        if use_conv:
            self.op = conv_nd(dims, channels, self.out_channels, 3, stride=step, padding=padding)
            return
        if self.out_channels != channels:
            raise SettingError(
                f"Downsample: average pooling keeps the width, so {channels} -> {out_channels} channels needs "
                "use_conv=True (conv_resample in UNetModel); or leave out_channels unset."
            )
        self.op = avg_pool_nd(dims, kernel_size=step, stride=step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, self.channels, "Downsample")
        return self.op(x)


# --------------------------------------------------------------------------------------------------------
# Residual block
# --------------------------------------------------------------------------------------------------------


def _norm_act_conv(c_in: int, c_out: int, dims: int, dropout: float | None = None, zero: bool = False) -> nn.Sequential:
    """GroupNorm → SiLU → [Dropout] → 3x3 conv (zero-initialised if ``zero``)."""
    conv = conv_nd(dims, c_in, c_out, 3, padding=1)
    layers = [normalization(c_in), nn.SiLU()]
    if dropout is not None:
        layers.append(nn.Dropout(p=dropout))
    return nn.Sequential(*layers, zero_module(conv) if zero else conv)


def _skip_path(c_in: int, c_out: int, use_conv: bool, dims: int) -> nn.Module:
    """Identity when the width is kept; otherwise a 3x3 (``use_conv``) or 1x1 projection."""
    if c_in == c_out:
        return nn.Identity()
    size = 3 if use_conv else 1
    return conv_nd(dims, c_in, c_out, size, padding=size // 2)


def _resampler_pair(channels: int, dims: int, up: bool, down: bool) -> tuple[nn.Module, nn.Module]:
    """The parameter-free resamplers applied to the residual branch and to the skip path."""
    kind = Upsample if up else Downsample if down else None
    if kind is None:
        return nn.Identity(), nn.Identity()
    return kind(channels, False, dims), kind(channels, False, dims)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding ``emb (B, E)``.

    ``h = in_layers(x)`` (GroupNorm, SiLU, [×2 up/down], 3x3 conv). The embedding ``e = emb_layers(emb)``
    enters either additively, ``out_layers(h + e)``, or (``use_scale_shift_norm``) as a FiLM of the
    normalised ``h``: ``e = (scale, shift)``, ``rest(norm(h)·(1 + scale) + shift)``, where ``out_layers`` is
    GroupNorm, SiLU, Dropout, zero-initialised 3x3 conv. Output: ``skip_connection(x) + h``, the skip being
    the identity, a 3x3 conv (``use_conv``) or a 1x1 conv. Being zero-initialised, a new block is its skip.
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
        width = out_channels or channels
        self.channels, self.out_channels, self.emb_channels = channels, width, emb_channels
        self.dropout, self.use_conv, self.use_checkpoint = dropout, use_conv, use_checkpoint
        self.use_scale_shift_norm, self.updown = use_scale_shift_norm, up or down

        film = 2 if use_scale_shift_norm else 1  # (scale, shift) or one additive bias per channel
        self.in_layers = _norm_act_conv(channels, width, dims)
        self.h_upd, self.x_upd = _resampler_pair(channels, dims, up, down)
        self.emb_layers = nn.Sequential(nn.SiLU(), linear(emb_channels, film * width))
        self.out_layers = _norm_act_conv(width, width, dims, dropout=dropout, zero=True)
        self.skip_connection = _skip_path(channels, width, use_conv, dims)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x (B, channels, H, W)``, ``emb (B, emb_channels)`` -> ``(B, out_channels, H', W')``."""
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h, x = self._enter(x)  # h (B, out_channels, H', W'), x (B, channels, H', W')
        h = self._condition(h, emb)  # (B, out_channels, H', W')
        return self.skip_connection(x) + h  # (B, out_channels, H', W')

    def _enter(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``in_layers`` on ``x``, with the resampling (if any) between its activation and its conv."""
        if not self.updown:
            return self.in_layers(x), x  # (B, out_channels, H, W), (B, channels, H, W)
        *pre, conv = self.in_layers
        a = x  # (B, channels, H, W)
        for layer in pre:
            a = layer(a)  # (B, channels, H, W)
        return conv(self.h_upd(a)), self.x_upd(x)  # (B, out_channels, H', W'), (B, channels, H', W')

    def _condition(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``out_layers`` applied to ``h`` with the embedding added, or as scale and shift after the norm."""
        e = self.emb_layers(emb).type(h.dtype)  # (B, film·out_channels)
        e = e.reshape(*e.shape, *[1] * (h.ndim - e.ndim))  # (B, film·out_channels, 1, 1)
        if not self.use_scale_shift_norm:
            return self.out_layers(h + e)  # (B, out_channels, H', W')
        norm, *rest = self.out_layers
        scale, shift = e.chunk(2, dim=1)  # (B, out_channels, 1, 1) each
        h = norm(h) * (1 + scale) + shift  # (B, out_channels, H', W')
        for layer in rest:
            h = layer(h)  # (B, out_channels, H', W')
        return h


# --------------------------------------------------------------------------------------------------------
# Self-attention
# --------------------------------------------------------------------------------------------------------


class _PackedQKVAttention(nn.Module, ThopAttentionCounter):
    """Multi-head ``softmax(QᵀK / √d) Vᵀ`` on a packed ``qkv (B, 3·heads·d, T) -> (B, heads·d, T)``.

    ``packing`` is the einops layout of the packed channel axis; subclasses differ only in it.
    """

    packing = ""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        tokens = qkv.transpose(1, 2).contiguous()  # (B, T, 3·heads·d)
        pattern = f"b t ({self.packing}) -> three b h t d"
        q, k, v = rearrange(tokens, pattern, three=3, h=self.n_heads)  # (B, heads, T, d) each
        return rearrange(F.scaled_dot_product_attention(q, k, v), "b h t d -> b (h d) t")


class QKVAttentionLegacy(_PackedQKVAttention):
    """Packed as ``(heads, [q, k, v], d)``: each head's q, k and v next to each other."""

    packing = "h three d"


class QKVAttention(_PackedQKVAttention):
    """Packed as ``([q, k, v], heads, d)``: all queries, then all keys, then all values."""

    packing = "three h d"


def _head_count(channels: int, num_heads: int, num_head_channels: int) -> int:
    """``num_heads`` heads, or as many heads of ``num_head_channels`` as fill ``channels`` (when not -1)."""
    if num_head_channels == -1:
        return num_heads
    if channels % num_head_channels:
        raise SettingError(
            f"AttentionBlock: heads of {num_head_channels} channels do not tile a {channels}-channel layer; "
            "pick num_head_channels dividing every level's width (model_channels × channel_mult)."
        )
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """Self-attention across the positions of ``x (B, C, ...)``: ``x + proj_out(attention(qkv(norm(x))))``,
    with ``proj_out`` zero-initialised (a new block is the identity)."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        heads = _head_count(channels, num_heads, num_head_channels)
        kind = QKVAttention if use_new_attention_order else QKVAttentionLegacy
        self.channels, self.num_heads, self.use_checkpoint = channels, heads, use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, 3 * channels, 1)
        self.attention = kind(heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2)  # (B, C, T)
        update = self.proj_out(self.attention(self.qkv(self.norm(tokens))))  # (B, C, T)
        return (tokens + update).reshape(x.shape)


class AttentionPool2d(nn.Module):
    """Attention pooling as in CLIP's image encoder: ``(B, embed_dim, H, W) -> (B, output_dim)``.

    The tokens are the mean over positions followed by the ``H·W`` positions, plus a learned positional
    embedding ``(embed_dim, H·W + 1)``; the result is the first (mean) token after multi-head self-attention
    (heads of ``num_heads_channels``) and the output projection ``c_proj``.
    """

    def __init__(
        self, spacial_dim: int, embed_dim: int, num_heads_channels: int, output_dim: int | None = None
    ) -> None:
        super().__init__()
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads)
        positions = torch.randn(embed_dim, 1 + spacial_dim * spacial_dim)  # the mean token, then H·W
        self.positional_embedding = nn.Parameter(positions / embed_dim**0.5)
        self.qkv_proj, self.c_proj = (conv_nd(1, embed_dim, c, 1) for c in (3 * embed_dim, output_dim or embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2)  # (B, C, H·W)
        tokens = torch.cat([tokens.mean(dim=-1, keepdim=True), tokens], dim=-1)  # (B, C, 1 + H·W)
        tokens = tokens + self.positional_embedding.to(x.dtype)  # (B, C, 1 + H·W)
        return self.c_proj(self.attention(self.qkv_proj(tokens)))[:, :, 0]  # (B, output_dim)


# --------------------------------------------------------------------------------------------------------
# float16 torso
# --------------------------------------------------------------------------------------------------------

#: The layers ``convert_module_to_f16`` casts (and whose weights set the torso's compute dtype).
FP16_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.LayerNorm)


def convert_module_to_f16(x: nn.Module) -> None:
    """Cast the parameters of a conv / linear / layer-norm layer ``x`` to float16 (group norms stay float32)."""
    if isinstance(x, FP16_LAYERS):
        x.to(torch.float16)


def convert_module_to_f32(x: nn.Module) -> None:
    """Undo :func:`convert_module_to_f16` on ``x``."""
    if isinstance(x, FP16_LAYERS):
        x.to(torch.float32)


def cast_torso(modules: Iterable[nn.Module], dtype: torch.dtype) -> None:
    """Apply :func:`convert_module_to_f16` (``dtype`` float16) or :func:`convert_module_to_f32` to ``modules``."""
    convert = convert_module_to_f16 if dtype == torch.float16 else convert_module_to_f32
    for module in modules:
        module.apply(convert)
