"""Inference-only fast variants of the autoencoder's layers, and ``swap_fast_autoencoder`` that puts them in place.

- ``BandedConv2d``: a conv run in bands of rows (each with its halo) written into one output. A CPU conv copies
  its whole input and output into oneDNN's blocked layout; in bands those copies are one band's size. Bit-equal
  to the conv: every output pixel is the same sum over the same inputs.
- ``FastResnetBlock``: the ResnetBlock with its swishes and additions written into tensors the block itself just
  made, and its convs banded. Bit-equal to the ResnetBlock.
- ``FastUpsample``: nearest ×2 upsampling and the 3×3 conv as one step on the input
  (``ldm.modules.diffusionmodules.upsample_conv``): 16 instead of 36 multiply-adds per input pixel and channel
  pair and no upsampled intermediate; equal to the Upsample within float rounding (the same products summed in
  another order).

Each is built from a reference module and holds that module's own parameters and submodules under the same
names, so the state dict keeps its keys and the swap frees the reference module instead of keeping a copy. Each
raises under autograd (``ldm.modules.fast.swap.inference_only``): training runs the reference modules.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.diffusionmodules.autoencoder_blocks import ResnetBlock, Upsample
from ldm.modules.diffusionmodules.encoder_decoder import Decoder
from ldm.modules.diffusionmodules.upsample_conv import is_upsample_conv, upsample_conv
from ldm.modules.fast.swap import inference_only, replace_modules

__all__ = ["BAND_BYTES", "BandedConv2d", "FastResnetBlock", "FastUpsample", "is_bandable", "swap_fast_autoencoder"]

#: Inputs larger than this many bytes run in bands of about this size.
BAND_BYTES = 16 * 2**20


def is_bandable(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain stride-1, undilated ``nn.Conv2d`` zero-padded by half its odd kernel (the
    "same" convs ``BandedConv2d`` computes)."""
    return (
        type(conv) is nn.Conv2d
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and all(size % 2 == 1 for size in conv.kernel_size)
        and conv.padding == (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
    )


class BandedConv2d(nn.Module):
    """``conv(x)`` for ``x (B, C_in, H, W) -> (B, C_out, H, W)``; a CPU input larger than ``band_bytes`` runs in
    bands of rows, each read with ``padding`` extra rows above and below (zeros beyond the image)."""

    def __init__(self, conv: nn.Conv2d, band_bytes: int = BAND_BYTES) -> None:
        if not is_bandable(conv):
            raise ValueError(f"BandedConv2d needs a stride-1 'same' nn.Conv2d with an odd kernel, got {conv}.")
        super().__init__()
        self.weight = conv.weight
        self.register_parameter("bias", conv.bias)
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.padding, self.groups = conv.padding, conv.groups
        self.band_bytes = band_bytes

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, band_bytes={self.band_bytes}"

    def _rows_per_band(self, x: torch.Tensor) -> int | None:
        """Rows per band, or None where ``x`` runs whole (small, not on the CPU, or not contiguous)."""
        size = x.numel() * x.element_size()
        if x.device.type != "cpu" or size <= self.band_bytes or not x.is_contiguous():
            return None
        return max(1, self.band_bytes * x.shape[2] // size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inference_only(self, x)
        rows = self._rows_per_band(x)
        if rows is None:
            return F.conv2d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)
        height, halo = x.shape[2], self.padding[0]
        out = None
        for top in range(0, height, rows):
            bottom = min(top + rows, height)
            read_from, read_to = max(top - halo, 0), min(bottom + halo, height)
            band = x[:, :, read_from:read_to]  # (B, C_in, ≤ rows + 2·halo, W)
            zeros_above, zeros_below = read_from - (top - halo), bottom + halo - read_to
            if zeros_above or zeros_below:
                band = F.pad(band, (0, 0, zeros_above, zeros_below))  # (B, C_in, rows + 2·halo, W)
            part = F.conv2d(band, self.weight, self.bias, padding=(0, self.padding[1]), groups=self.groups)
            if out is None:
                out = part.new_empty((x.shape[0], part.shape[1], height, part.shape[3]))
            out[:, :, top:bottom] = part  # (B, C_out, rows, W)
        return out


def _banded(module: nn.Module, band_bytes: int) -> nn.Module:
    return BandedConv2d(module, band_bytes) if is_bandable(module) else module


def _swish_of_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``swish(norm(x))``, in place on the normalised tensor where ``norm`` is a GroupNorm (a fresh tensor)."""
    return F.silu(norm(x), inplace=isinstance(norm, nn.GroupNorm))


def _add_into(h: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``h + other``, written into ``h`` where the sum has ``h``'s shape and dtype."""
    if torch.result_type(h, other) == h.dtype and torch.broadcast_shapes(h.shape, other.shape) == h.shape:
        return h.add_(other)
    return h + other


class FastResnetBlock(nn.Module):
    """``ResnetBlock`` for inference: the same function, bit for bit, with the swishes and the additions done in
    place on the block's own intermediate tensors (never on ``x``) and its "same" convs banded."""

    def __init__(self, block: ResnetBlock, band_bytes: int = BAND_BYTES) -> None:
        super().__init__()
        self.in_channels, self.out_channels = block.in_channels, block.out_channels
        self.use_conv_shortcut = block.use_conv_shortcut
        shortcut = block.shortcut
        self.shortcut_name = next((name for name, child in block.named_children() if child is shortcut), None)
        for name, child in block.named_children():
            self.add_module(name, _banded(child, band_bytes))

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        inference_only(self, x)
        h = self.conv1(_swish_of_norm(self.norm1, x))  # (B, out, H, W)
        if temb is not None:
            h = _add_into(h, self.temb_proj(F.silu(temb))[:, :, None, None])  # + (B, out, 1, 1)
        h = self.conv2(self.dropout(_swish_of_norm(self.norm2, h)))  # (B, out, H, W)
        skip = x if self.shortcut_name is None else getattr(self, self.shortcut_name)(x)  # (B, out, H, W)
        return _add_into(h, skip)  # (B, out, H, W)


class FastUpsample(nn.Module):
    """``Upsample`` with a 3×3 conv, for inference: ``upsample_conv(x, conv)``, ``(B, C, H, W) -> (B, C, 2H, 2W)``.

    Should ``conv`` be replaced after the swap by something ``upsample_conv`` cannot fold (e.g. a packed conv),
    the upsampling and the conv run one after the other instead.
    """

    def __init__(self, upsample: Upsample) -> None:
        if not (upsample.with_conv and is_upsample_conv(upsample.conv)):
            raise ValueError(f"FastUpsample needs an Upsample with a plain 3x3 padding-1 conv, got {upsample}.")
        super().__init__()
        self.with_conv = True
        self.conv = upsample.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inference_only(self, x)
        if is_upsample_conv(self.conv):
            return upsample_conv(x, self.conv)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _fast_layer(module: nn.Module, band_bytes: int) -> nn.Module | None:
    if isinstance(module, ResnetBlock):
        return FastResnetBlock(module, band_bytes)
    if isinstance(module, Upsample) and module.with_conv and is_upsample_conv(module.conv):
        return FastUpsample(module)
    return None


def swap_fast_autoencoder(module: nn.Module, band_bytes: int = BAND_BYTES) -> int:
    """Swap, in place, every ``ResnetBlock`` in ``module`` for a ``FastResnetBlock``, every ``Upsample`` with a
    plain 3×3 conv for a ``FastUpsample``, and the ``conv_out`` of every ``Decoder`` (``module`` itself included)
    for a ``BandedConv2d``; returns the number of modules swapped.

    ``module`` is any tree: an ``AutoencoderKL``, a ``Decoder``, a ``LatentDiffusion`` (its first stage, and any
    pixel-space ``Model``, are swapped; its UNet has none of these layers). ``module`` itself is never replaced.
    Layers already swapped, or replaced by other modules (e.g. packed convs), are left alone, so a second call
    returns 0. Afterwards the tree is for inference only: the swapped layers raise under autograd, and the state
    dict keeps its keys and tensors.
    """
    swapped = replace_modules(module, lambda child: _fast_layer(child, band_bytes))
    for decoder in [m for m in module.modules() if isinstance(m, Decoder)]:
        if is_bandable(decoder.conv_out):
            decoder.conv_out = BandedConv2d(decoder.conv_out, band_bytes)
            swapped += 1
    return swapped
