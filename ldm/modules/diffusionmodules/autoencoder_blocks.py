"""The layers the first-stage autoencoder is made of: swish, GroupNorm, ×2 resampling, the ResNet block and
spatial self-attention. All act on ``(B, C, H, W)`` feature maps.

These are the reference forms: plain autograd-friendly tensor operations, exactly the equations in the
docstrings. The inference-only variants (convolutions in row bands, in-place swish and residual adds, the fused
upsample-conv) live in ``ldm.modules.fast.autoencoder`` and are swapped in by ``swap_fast_autoencoder``.
``ldm.modules.diffusionmodules.model`` re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.attention import CrossAttention, attention

__all__ = [
    "ATTN_TYPES",
    "AttnBlock",
    "Downsample",
    "LinAttnBlock",
    "MemoryEfficientAttnBlock",
    "MemoryEfficientCrossAttentionWrapper",
    "Normalize",
    "ResnetBlock",
    "Upsample",
    "make_attn",
    "nonlinearity",
]


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish ``x · σ(x)``, computed by the fused ``silu`` kernel (within one ulp of the product)."""
    return F.silu(x)


def Normalize(in_channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """``GroupNorm(num_groups, in_channels)`` with ε = 1e-6 and a learned per-channel scale and shift."""
    return nn.GroupNorm(num_groups, in_channels, eps=1e-6, affine=True)


def _conv(width_in: int, width_out: int, kernel: int, stride: int = 1, pad: int | None = None) -> nn.Conv2d:
    """A ``kernel × kernel`` conv, zero-padded by ``kernel // 2`` unless ``pad`` says otherwise."""
    return nn.Conv2d(width_in, width_out, kernel, stride=stride, padding=kernel // 2 if pad is None else pad)


class _Resample(nn.Module):
    """A ×2 resampler with an optional 3×3 conv ``conv`` of ``conv_stride`` and ``conv_padding``."""

    conv_stride: int
    conv_padding: int

    def __init__(self, in_channels: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = _conv(in_channels, in_channels, 3, stride=self.conv_stride, pad=self.conv_padding)


class Upsample(_Resample):
    """``y = conv(u)`` with ``u[2i + a, 2j + b] = x[i, j]`` (nearest-neighbour doubling), or ``y = u`` when
    ``with_conv`` is False: ``(B, C, H, W) -> (B, C, 2H, 2W)``; ``conv`` is a 3×3 conv with padding 1."""

    conv_stride, conv_padding = 1, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        doubled = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(doubled) if self.with_conv else doubled


class Downsample(_Resample):
    """Halve the resolution: ``(B, C, H, W) -> (B, C, ⌊H/2⌋, ⌊W/2⌋)``.

    ``with_conv``: a 3×3 stride-2 conv over ``x`` padded with one zero row at the bottom and one zero column at
    the right (no padding on the top and left). Otherwise the mean of each 2×2 patch.
    """

    conv_stride, conv_padding = 2, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.with_conv:
            return F.avg_pool2d(x, 2)
        padded = F.pad(x, (0, 1, 0, 1))  # (B, C, H + 1, W + 1)
        return self.conv(padded)


#: Skip-path conv of a ResnetBlock whose width changes: attribute name and kernel size, keyed by ``conv_shortcut``.
_SKIP_CONV = {True: ("conv_shortcut", 3), False: ("nin_shortcut", 1)}


class ResnetBlock(nn.Module):
    """``y = skip(x) + conv2(drop(swish(norm2(conv1(swish(norm1(x))) + temb_proj(swish(temb))))))``.

    ``x (B, in_channels, H, W)``, ``temb (B, temb_channels)`` or None ``-> (B, out_channels, H, W)``; the
    ``temb`` term is broadcast over the positions and left out when ``temb`` is None. ``skip`` is the identity
    when ``out_channels == in_channels``, else a conv: 3×3 (``conv_shortcut``) with ``conv_shortcut=True``, 1×1
    (``nin_shortcut``) otherwise. ``temb_channels=0`` builds no ``temb_proj`` (the autoencoder has no timestep).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float,
        temb_channels: int = 512,
    ) -> None:
        super().__init__()
        width = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels, self.use_conv_shortcut = in_channels, width, conv_shortcut
        # the residual branch, in the order the data runs through it
        self.norm1 = Normalize(in_channels)
        self.conv1 = _conv(in_channels, width, 3)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, width)
        self.norm2 = Normalize(width)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(width, width, 3)
        if width != in_channels:
            name, kernel = _SKIP_CONV[bool(conv_shortcut)]
            self.add_module(name, _conv(in_channels, width, kernel))

    @property
    def shortcut(self) -> nn.Module | None:
        """The skip path's conv (``conv_shortcut`` or ``nin_shortcut``), or None where the skip is the identity."""
        return next((self._modules[name] for name, _ in _SKIP_CONV.values() if name in self._modules), None)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))  # (B, out, H, W)
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]  # + (B, out, 1, 1)
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))  # (B, out, H, W)
        shortcut = self.shortcut
        skip = x if shortcut is None else shortcut(x)  # (B, out, H, W)
        return skip + h  # (B, out, H, W)


class AttnBlock(nn.Module):
    """One-head self-attention across the ``H·W`` positions, added to its input.

    ``y = x + proj_out(softmax(q kᵀ / √C) v)`` where ``q, k, v`` are 1×1 convs of ``norm(x)`` read as
    ``(H·W, C)`` matrices. Computed by ``ldm.modules.attention.attention`` (scaled-dot-product attention, float32
    for float16 inputs), in chunks of at most ``slice_size`` query positions when that is set
    (``ldm.modules.attention_slicing``). ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        for name in ("q", "k", "v", "proj_out"):
            self.add_module(name, _conv(in_channels, in_channels, 1))
        self.slice_size: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        normed = self.norm(x)  # (B, C, H, W)
        q, k, v = (rearrange(proj(normed), "b c h w -> b 1 (h w) c") for proj in (self.q, self.k, self.v))
        mixed = attention(q, k, v, slice_size=self.slice_size)  # (B, 1, H·W, C)
        mixed = rearrange(mixed, "b 1 (h w) c -> b c h w", h=height, w=width)  # (B, C, H, W)
        return x + self.proj_out(mixed)  # (B, C, H, W)


class LinAttnBlock(nn.Module):
    """One-head linear attention, ``attn_type="linear"``: ``y = to_out(V · softmax_n(K)ᵀ · Q)``.

    ``Q, K, V (C, H·W)`` come from one bias-free 1×1 conv ``to_qkv``; the softmax of the keys runs over the
    positions. There is neither a normalisation nor a residual connection. ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.to_qkv = nn.Conv2d(in_channels, 3 * in_channels, kernel_size=1, bias=False)
        self.to_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        q, k, v = rearrange(self.to_qkv(x), "b (qkv c) h w -> qkv b c (h w)", qkv=3)  # (B, C, H·W) each
        context = torch.einsum("bdn,ben->bde", k.softmax(dim=-1), v)  # (B, C, C)
        out = torch.einsum("bde,bdn->ben", context, q)  # (B, C, H·W)
        return self.to_out(rearrange(out, "b c (h w) -> b c h w", h=height, w=width))


#: SD 2.x's name for the xformers form of AttnBlock: the same attention and weight names, computed by SDPA here.
MemoryEfficientAttnBlock = AttnBlock


class MemoryEfficientCrossAttentionWrapper(CrossAttention):
    """Cross-attention over the ``H·W`` positions of a feature map, added to it (``attn_type=
    "memory-efficient-cross-attn"``): ``y = x + CrossAttention(tokens(x), context)`` with ``tokens`` reading
    ``(B, C, H, W)`` as ``(B, H·W, C)``. Constructor and weights are CrossAttention's (``query_dim = C``).

    The original adds the attention output to the flattened input and crashes on the shape mismatch (and its
    ``make_attn`` never reaches this class); here the sum is taken in the feature-map layout.
    ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        height, width = x.shape[2:]
        tokens = rearrange(x, "b c h w -> b (h w) c")  # (B, H·W, C)
        mixed = super().forward(tokens, context=context, mask=mask)  # (B, H·W, C)
        return x + rearrange(mixed, "b (h w) c -> b c h w", h=height, w=width)


#: ``attn_type`` -> a factory of the attention layer for ``in_channels`` and the ``attn_kwargs`` it takes.
_ATTENTION: dict[str, Callable[..., nn.Module]] = {
    "vanilla": AttnBlock,
    # SD 2.x configs ask for xformers' block: the same attention and keys, which AttnBlock computes itself.
    "vanilla-xformers": MemoryEfficientAttnBlock,
    "memory-efficient-cross-attn": lambda channels, **kwargs: MemoryEfficientCrossAttentionWrapper(
        query_dim=channels, **kwargs
    ),
    "linear": LinAttnBlock,
    "none": lambda _: nn.Identity(),
}
ATTN_TYPES = tuple(_ATTENTION)


def make_attn(in_channels: int, attn_type: str = "vanilla", attn_kwargs: dict | None = None) -> nn.Module:
    """The attention layer ``attn_type`` names: ``"vanilla"`` or ``"vanilla-xformers"`` (AttnBlock), ``"linear"``
    (LinAttnBlock), ``"memory-efficient-cross-attn"`` (MemoryEfficientCrossAttentionWrapper with ``query_dim =
    in_channels`` and CrossAttention's other arguments from ``attn_kwargs``) or ``"none"`` (the identity).
    Only the cross-attention type takes ``attn_kwargs``."""
    factory = _ATTENTION.get(attn_type)
    if factory is None:
        raise ValueError(f"ddconfig attn_type={attn_type!r} is unknown; use one of {list(ATTN_TYPES)}.")
    if attn_type == "memory-efficient-cross-attn":
        return factory(in_channels, **(attn_kwargs or {}))
    if attn_kwargs:
        raise ValueError(f"attn_kwargs are only for attn_type='memory-efficient-cross-attn', not {attn_type!r}.")
    return factory(in_channels)
