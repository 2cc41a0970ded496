"""Inference on CPU: convolution weights packed once into oneDNN's blocked layout instead of on every call.

An eager ``nn.Conv2d`` on CPU re-lays its weight out for oneDNN on each forward; for the 1280-channel 3x3 convs
of the Stable Diffusion UNet that costs as much as the convolution itself at 8x8 latents. ``prepack_convolutions``
swaps every ``nn.Conv2d`` for a ``PackedConv2d`` holding the packed weight (the dense weight is dropped, so memory
stays the same), re-packed only when the input shape changes (a new latent size or batch). The outputs are the
same numbers (the same oneDNN kernel runs); the result is channels-last.

A nearest ×2 ``Upsample`` with its 3×3 conv (the UNet's and the autoencoder decoder's) becomes a
``PackedUpsampleConv``: one packed 2×2 conv computing the four output phases on the input
(``ldm.modules.diffusionmodules.upsample_conv``), 2.25× fewer FLOPs and no upsampled intermediate, for a packed
weight 16/9 the size of the conv's. Its output equals the direct form within float rounding (the same products
summed in another order), not bit for bit.

Inference only: packed convolutions have no gradient, and the model's ``state_dict`` no longer holds their
weights (pack a copy, or reload the checkpoint to train or save).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ldm.modules.diffusionmodules import model, unet_blocks
from ldm.modules.diffusionmodules.upsample_conv import PHASES, interleave_phases, is_upsample_conv, phase_weights

logger = logging.getLogger(__name__)


class PackedConv2d(nn.Module):
    """``conv(x)`` of a 2-D ``nn.Conv2d`` (zero padding) with its weight pre-packed for oneDNN;
    ``(B, C_in, H, W) -> (B, C_out, H', W')`` channels-last."""

    def __init__(self, conv: nn.Conv2d, example_size: int = 32) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"PackedConv2d needs numeric zero padding, got {conv.padding_mode!r} / {conv.padding!r}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.packed_for: list[int] = []
        self._pack(conv.weight.detach(), [1, conv.in_channels, example_size, example_size])

    def _pack(self, weight: torch.Tensor, input_size: list[int]) -> None:
        """oneDNN picks the blocked layout for one input shape; another shape would re-layout on every call."""
        self.packed = torch.ops.mkldnn._reorder_convolution_weight(
            weight.contiguous(memory_format=torch.channels_last), self.padding, self.stride, self.dilation,
            self.groups, input_size,
        )
        self.packed_for = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("PackedConv2d is inference-only; run it under torch.no_grad() or skip prepacking.")
        if list(x.shape) != self.packed_for:
            self._pack(self.packed.to_dense(), list(x.shape))
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.packed, self.bias, self.padding, self.stride, self.dilation, self.groups, "none", [], ""
        )


class PackedUpsampleConv(nn.Module):
    """``conv(nearest_upsample_x2(x))`` of a 3×3, padding-1 ``nn.Conv2d`` as one packed 2×2 conv to
    ``4·C_out`` phase channels, interleaved: ``(B, C_in, H, W) -> (B, C_out, 2H, 2W)`` channels-last."""

    def __init__(self, conv: nn.Conv2d, example_size: int = 32) -> None:
        super().__init__()
        if not is_upsample_conv(conv):
            raise ValueError(f"PackedUpsampleConv needs a 3x3 nn.Conv2d with padding 1 and stride 1, got {conv}")
        self.in_channels = conv.in_channels
        phases = nn.Conv2d(conv.in_channels, len(PHASES) * conv.out_channels, kernel_size=2, padding=1,
                           bias=conv.bias is not None)
        with torch.no_grad():
            phases.weight.copy_(phase_weights(conv.weight))
            if conv.bias is not None:
                phases.bias.copy_(conv.bias.repeat(len(PHASES)))
        self.phases = PackedConv2d(phases, example_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unet_blocks._check_channels(x, self.in_channels, "Upsample")
        return interleave_phases(self.phases(x).chunk(len(PHASES), dim=1), channels_last=True)


def _packable_conv(module: nn.Module) -> bool:
    """An ``nn.Conv2d`` with a float32 weight on the CPU (what oneDNN packing applies to)."""
    return isinstance(module, nn.Conv2d) and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32


def _packable_upsample(module: nn.Module) -> bool:
    """A UNet or decoder ``Upsample`` whose conv ``upsample_conv`` can fuse (2-D, fp32, on the CPU)."""
    conv = getattr(module, "conv", None)
    return (
        (isinstance(module, model.Upsample) or (isinstance(module, unet_blocks.Upsample) and module.dims == 2))
        and _packable_conv(conv)
        and is_upsample_conv(conv)
    )


def prepack_convolutions(module: nn.Module, example_size: int = 32, skip: tuple[type, ...] = ()) -> nn.Module:
    """Replace, in place, every fp32 CPU ``Upsample`` with a 3×3 conv by a ``PackedUpsampleConv`` and every other
    fp32 CPU ``nn.Conv2d`` by a ``PackedConv2d``, except inside modules of the ``skip`` types (which read their
    conv weights directly); returns ``module``. A no-op, with a log line, where oneDNN is unavailable."""
    if not torch.backends.mkldnn.is_available():
        logger.info("prepack_convolutions: oneDNN (mkldnn) is unavailable in this torch build; nothing packed.")
        return module
    skipped = {id(m) for owner in module.modules() if isinstance(owner, skip) for m in owner.modules()}
    for parent in list(module.modules()):
        if id(parent) in skipped:
            continue
        for name, child in list(parent.named_children()):
            if _packable_upsample(child):
                setattr(parent, name, PackedUpsampleConv(child.conv, example_size))
                skipped.update(id(m) for m in child.modules())
            elif _packable_conv(child):
                setattr(parent, name, PackedConv2d(child, example_size))
    return module
