"""Nearest-neighbour ×2 upsampling followed by a 3×3 conv (padding 1), computed on the input instead of on the
upsampled copy.

Output pixel ``(2i + a, 2j + b)`` reads only input rows ``i − 1 + a, i + a`` and columns ``j − 1 + b, j + b``, so
each of the four phases ``(a, b)`` is a 2×2 conv of the input with folded taps (``phase_weights``), padded by 1 and
cropped at offset ``(a, b)``: 16 instead of 36 multiply-adds per input pixel and channel pair, and no 4×-size
intermediate. The same products summed in another order, so equal to the direct form within float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

#: The output phases ``(row parity, column parity)`` in the order of ``phase_weights``.
PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def _fold_taps(weight: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
    """Three kernel taps ``(w0, w1, w2)`` along ``dim`` -> the two that an output of ``phase`` (0 even, 1 odd)
    applies to the original input: ``(w0, w1 + w2)`` or ``(w0 + w1, w2)``."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack((w0, w1 + w2) if phase == 0 else (w0 + w1, w2), dim)


def _each_phase_weight(weight: torch.Tensor) -> Iterator[torch.Tensor]:
    """The ``(C_out, C_in, 2, 2)`` weight of each phase in ``PHASES`` order, one at a time."""
    for a in (0, 1):
        rows = _fold_taps(weight, 2, a)
        for b in (0, 1):
            yield _fold_taps(rows, 3, b)


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """A 3×3 conv weight ``(C_out, C_in, 3, 3)`` -> the 2×2 weights of its four phases stacked along the output
    channels in ``PHASES`` order: ``(4·C_out, C_in, 2, 2)``."""
    return torch.cat(list(_each_phase_weight(weight)))


def interleave_phases(phases: Iterable[torch.Tensor], channels_last: bool = False) -> torch.Tensor:
    """The four phase outputs ``(B, C_out, H + 1, W + 1)`` (``PHASES`` order) of an ``H × W`` input -> the
    upsampled-conv output ``(B, C_out, 2H, 2W)``, in channels-last memory format if ``channels_last``."""
    out = None
    for (a, b), phase in zip(PHASES, phases, strict=True):
        if out is None:
            height, width = phase.shape[2] - 1, phase.shape[3] - 1
            out = torch.empty(
                (phase.shape[0], phase.shape[1], 2 * height, 2 * width), dtype=phase.dtype, device=phase.device,
                memory_format=torch.channels_last if channels_last else torch.contiguous_format,
            )
        out.unflatten(3, (width, 2)).unflatten(2, (height, 2))[:, :, :, a, :, b] = phase[
            :, :, a : a + height, b : b + width
        ]
    return out


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(nearest_upsample_x2(x))`` for a 3×3 conv with padding 1: ``(B, C, H, W) -> (B, C_out, 2H, 2W)``,
    one phase at a time (the largest intermediate is a quarter of the output)."""
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    phases = (F.conv2d(x, w, conv.bias, padding=1) for w in _each_phase_weight(conv.weight))
    return interleave_phases(phases, channels_last)


def is_upsample_conv(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 3×3 ``nn.Conv2d`` with padding 1 (what ``upsample_conv`` computes)."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )
