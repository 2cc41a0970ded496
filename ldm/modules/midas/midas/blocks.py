"""The MiDaS decoder blocks under their original names.

Two families: the ``_custom`` blocks (DPT, MidasNet_small) are this project's ``fusion`` blocks with the original
constructor; ``ResidualConvUnit`` / ``FeatureFusionBlock`` are MidasNet's older variants (no output conv, and a
skip that carries ``ReLU(x)``: the original applies its in-place ReLU to the unit's input before adding it back).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.midas import fusion

INTERPOLATING_MODES = ("linear", "bilinear", "bicubic", "trilinear")


class Interpolate(nn.Upsample):
    """Resampling by ``scale_factor`` as a module: ``F.interpolate(x, scale_factor=s, mode=mode)``.

    ``align_corners`` applies to the interpolating modes (linear, bilinear, bicubic, trilinear) and is ignored
    for "nearest" / "area", which have no corners to align.
    """

    def __init__(self, scale_factor: float, mode: str, align_corners: bool = False) -> None:
        corners = align_corners if mode in INTERPOLATING_MODES else None
        super().__init__(scale_factor=scale_factor, mode=mode, align_corners=corners)


class ResidualConvUnit(fusion.ResidualConvUnit):
    """MidasNet's residual unit: ``r + conv2(ReLU(conv1(r)))`` with ``r = ReLU(x)``; keeps ``(B, C, H, W)``.

    This is the pre-activation unit ``z + conv2(ReLU(conv1(ReLU(z))))`` applied to ``z = ReLU(x)`` (ReLU is
    idempotent). Unlike the original, the caller's tensor is left unchanged.
    """

    def __init__(self, features: int) -> None:
        super().__init__(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.relu(x))


class FeatureFusionBlock(nn.Module):
    """MidasNet's fusion block: ``Up2(RCU2(x + RCU1(skip)))`` (``Up2(RCU2(x))`` without skip), bilinear with
    aligned corners; ``(B, C, h, w)`` → ``(B, C, 2h, 2w)``. No output conv (the ``_custom`` block has one)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) not in (1, 2):
            raise TypeError(f"FeatureFusionBlock takes the coarse path and optionally a skip map, got {len(xs)}")
        merged = xs[0] if len(xs) == 1 else xs[0] + self.resConfUnit1(xs[1])
        return F.interpolate(self.resConfUnit2(merged), scale_factor=2, mode="bilinear", align_corners=True)


class ResidualConvUnit_custom(fusion.ResidualConvUnit):
    """``x + bn2(conv2(act(bn1(conv1(act(x))))))`` (batch norms only with ``bn``); see ``fusion``."""

    def __init__(self, features: int, activation: nn.Module, bn: bool) -> None:
        super().__init__(features, activation, bn)


class FeatureFusionBlock_custom(fusion.FeatureFusionBlock):
    """``out_conv(Up2(RCU2(x + RCU1(skip))))``, ``C → C`` (``C // 2`` with ``expand``); see ``fusion``.

    ``deconv`` is accepted and unused, as in the original (the upsampling is always bilinear).
    """

    def __init__(self, features: int, activation: nn.Module, deconv: bool = False, bn: bool = False,
                 expand: bool = False, align_corners: bool = True) -> None:
        super().__init__(features, activation, bn, expand, align_corners)
        self.deconv = deconv


def scratch_module(in_widths: Sequence[int], out_widths: Sequence[int], refiners: Sequence[nn.Module],
                   head: nn.Module) -> nn.Module:
    """The decoder container ``scratch`` of MidasNet / MidasNet_small (run by ``dpt.decode_levels``).

    ``layer{k}_rn``: 3x3 conv, no bias, ``in_widths[k-1] → out_widths[k-1]``; ``refinenet{k} = refiners[k-1]``;
    ``output_conv = head``.
    """
    scratch = nn.Module()
    for level, (width_in, width_out) in enumerate(zip(in_widths, out_widths, strict=True), start=1):
        scratch.add_module(f"layer{level}_rn", nn.Conv2d(width_in, width_out, kernel_size=3, padding=1, bias=False))
    for level, refiner in enumerate(refiners, start=1):
        scratch.add_module(f"refinenet{level}", refiner)
    scratch.output_conv = head
    return scratch
