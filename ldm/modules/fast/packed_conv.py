"""Convolutions for CPU sampling with their weights laid out once in oneDNN's blocked format.

An eager ``nn.Conv2d`` on the CPU re-lays its weight out for oneDNN on every call. ``PackedConv2d`` holds the
weight packed instead (and not the dense one: the swap replaces the conv, it does not sit beside it), re-packed
only when the input shape changes (a new latent size or batch); the same oneDNN kernel runs, so the output is the
channels-last conv's, bit for bit. ``PackedUpsampleConv`` runs a nearest ×2 upsample with its 3×3 conv as one
packed 2×2 conv to the four output phases (``ldm.modules.diffusionmodules.upsample_conv``): 2.25× fewer FLOPs and
no upsampled intermediate, equal to the direct form within float rounding (the same products summed in another
order); its packed weight is 16/9 the size of the conv's.

The packing uses private oneDNN ops of torch (``torch.ops.mkldnn._reorder_convolution_weight`` and
``_convolution_pointwise``); where a torch build lacks them, the same modules run ``F.conv2d`` on a channels-last
copy of the weight instead (same numbers, without the saved re-layout). Inference only: no gradients, and the
model's ``state_dict`` no longer holds the packed convs' weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.diffusionmodules import unet_blocks
from ldm.modules.diffusionmodules.upsample_conv import PHASES, interleave_phases, is_upsample_conv, phase_weights
from ldm.modules.fast.swap import has_torch_op, inference_only, replace_modules

#: The private oneDNN ops the packed path needs.
ONEDNN_OPS = ("_reorder_convolution_weight", "_convolution_pointwise")


def onednn_packing_available() -> bool:
    """Whether this torch build has oneDNN and the private ops that pack a conv weight and run on it."""
    return torch.backends.mkldnn.is_available() and all(has_torch_op("mkldnn", op) for op in ONEDNN_OPS)


class PackedConv2d(nn.Module):
    """``conv(x)`` of a 2-D ``nn.Conv2d`` (numeric zero padding) with its weight pre-packed for oneDNN;
    ``(B, C_in, H, W) -> (B, C_out, H', W')`` channels-last.

    Packed for inputs of ``(1, C_in, example_size, example_size)`` at once, or with ``example_size=None`` for the
    first input's shape at the first call (until then it holds the conv's dense weight, not a copy)."""

    def __init__(self, conv: nn.Conv2d, example_size: int | None = None) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"PackedConv2d needs numeric zero padding, got padding_mode={conv.padding_mode!r}, "
                f"padding={conv.padding!r}; leave this conv unpacked"
            )
        self._hold(conv.weight.detach(), conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups, example_size)

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        padding: tuple[int, int],
        example_size: int | None = None,
    ) -> PackedConv2d:
        """A packed stride-1 conv of ``weight (C_out, C_in, kh, kw)`` without building an ``nn.Conv2d`` first."""
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed._hold(weight, bias, padding, (1, 1), (1, 1), 1, example_size)
        return packed

    def _hold(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        padding: tuple[int, ...],
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
        groups: int,
        example_size: int | None,
    ) -> None:
        self.out_channels, in_per_group = weight.shape[:2]
        self.in_channels = in_per_group * groups
        self.padding, self.stride, self.dilation, self.groups = list(padding), list(stride), list(dilation), groups
        self.bias = None if bias is None else bias.detach()
        self.onednn = onednn_packing_available()
        self.packed_for: list[int] = []
        self.packed: torch.Tensor | None = None
        # the dense weight until the first packing (the reference conv's own tensor: no copy is made here)
        self.weight: torch.Tensor | None = weight.detach()
        if not self.onednn:
            self.weight = self.weight.contiguous(memory_format=torch.channels_last)
        elif example_size is not None:
            self._pack([1, self.in_channels, example_size, example_size])

    def _pack(self, input_size: list[int]) -> None:
        """oneDNN picks the blocked layout for one input shape; another shape would re-layout on every call. The
        dense weight (or, on a re-pack, a dense copy of the old packing) is dropped once the new packing exists."""
        dense = self.weight if self.packed is None else self.packed.to_dense()
        self.weight = self.packed = None
        self.packed = torch.ops.mkldnn._reorder_convolution_weight(
            dense.contiguous(memory_format=torch.channels_last), self.padding, self.stride, self.dilation,
            self.groups, input_size,
        )
        self.packed_for = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inference_only(self, x)
        if not self.onednn:
            x = x.contiguous(memory_format=torch.channels_last)
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if list(x.shape) != self.packed_for:
            self._pack(list(x.shape))
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.packed, self.bias, self.padding, self.stride, self.dilation, self.groups, "none", [], ""
        )


class PackedUpsampleConv(nn.Module):
    """``conv(nearest_upsample_x2(x))`` of a 3×3, padding-1 ``nn.Conv2d`` as one packed 2×2 conv to
    ``4·C_out`` phase channels, interleaved: ``(B, C_in, H, W) -> (B, C_out, 2H, 2W)`` channels-last."""

    def __init__(self, conv: nn.Conv2d, example_size: int | None = None) -> None:
        super().__init__()
        if not is_upsample_conv(conv):
            raise ValueError(
                f"PackedUpsampleConv fuses a 3x3 nn.Conv2d with padding 1, stride 1, dilation 1 and one group, "
                f"got {conv}; leave this upsampling unfused"
            )
        self.in_channels = conv.in_channels
        with torch.no_grad():
            weight = phase_weights(conv.weight)  # (4·C_out, C_in, 2, 2)
            bias = None if conv.bias is None else conv.bias.repeat(len(PHASES))  # (4·C_out,)
        self.phases = PackedConv2d.from_weight(weight, bias, (1, 1), example_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unet_blocks._check_channels(x, self.in_channels, "Upsample")
        return interleave_phases(self.phases(x).chunk(len(PHASES), dim=1), channels_last=True)


def _packable_conv(module: nn.Module) -> bool:
    """An ``nn.Conv2d`` with a float32 weight on the CPU and numeric zero padding (what packing applies to)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _fusable_upsample(module: nn.Module) -> bool:
    """A UNet or decoder ``Upsample`` whose conv ``PackedUpsampleConv`` can fuse (2-D, fp32, on the CPU)."""
    from ldm.modules.diffusionmodules import model

    conv = getattr(module, "conv", None)
    is_upsample = isinstance(module, model.Upsample) or (
        isinstance(module, unet_blocks.Upsample) and module.dims == 2
    )
    return is_upsample and _packable_conv(conv) and is_upsample_conv(conv)


def pack_convolutions(
    module: nn.Module, example_size: int | None = None, skip: tuple[type, ...] = ()
) -> int:
    """Swap, in place, every fp32 CPU ``Upsample`` with a 3×3 conv for a ``PackedUpsampleConv`` and every other
    fp32 CPU ``nn.Conv2d`` for a ``PackedConv2d``, leaving modules of the ``skip`` types (and what is inside them)
    alone; returns how many modules were swapped. Each dense weight is freed as its packed one takes its place."""

    def packed(child: nn.Module) -> nn.Module | None:
        if isinstance(child, skip):
            return child
        if _fusable_upsample(child):
            return PackedUpsampleConv(child.conv, example_size)
        if _packable_conv(child):
            return PackedConv2d(child, example_size)
        return None

    return replace_modules(module, packed)
