"""The DPT decoder's fusion ("refinenet") blocks.

A fusion block merges the coarser path with this level's map and doubles the resolution:
``y = Conv1x1(Up2(RCU2(x + RCU1(skip))))`` (the deepest block has no ``x`` and computes ``RCU2(skip)``), where
``RCU(z) = z + Conv3x3(act(Conv3x3(act(z))))`` (act = ReLU unless given; batch norm after each conv with ``bn``)
and ``Up2`` is bilinear, with aligned corners by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    """``z + bn2(conv2(act(bn1(conv1(act(z))))))``; keeps ``(B, C, H, W)``.

    ``activation`` defaults to ``nn.ReLU()``; ``bn1``/``bn2`` are batch norms with ``bn``, identities otherwise
    (so the plain unit has only ``conv1``/``conv2`` weights).
    """

    def __init__(self, channels: int, activation: nn.Module | None = None, bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels) if bn else nn.Identity()
        self.bn2 = nn.BatchNorm2d(channels) if bn else nn.Identity()
        self.activation = nn.ReLU() if activation is None else activation

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        hidden = self.bn1(self.conv1(self.activation(z)))
        return z + self.bn2(self.conv2(self.activation(hidden)))


class FeatureFusionBlock(nn.Module):
    """One refinenet level: ``(B, C, h, w)`` (+ skip of the same shape) → ``(B, C', 2h, 2w)``.

    ``C' = C`` (``C // 2`` with ``expand``); ``activation`` and ``bn`` configure both residual units;
    ``align_corners`` the bilinear upsampling.
    """

    def __init__(self, channels: int, activation: nn.Module | None = None, bn: bool = False, expand: bool = False,
                 align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.resConfUnit1 = ResidualConvUnit(channels, activation, bn)  # checkpoint key name
        self.resConfUnit2 = ResidualConvUnit(channels, activation, bn)  # checkpoint key name
        self.out_conv = nn.Conv2d(channels, channels // 2 if expand else channels, kernel_size=1)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        merged = coarse if skip is None else coarse + self.resConfUnit1(skip)
        refined = self.resConfUnit2(merged)
        upsampled = F.interpolate(refined, scale_factor=2, mode="bilinear", align_corners=self.align_corners)
        return self.out_conv(upsampled)
