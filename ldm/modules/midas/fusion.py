"""The DPT decoder's fusion ("refinenet") blocks.

A fusion block merges the coarser path with this level's map and doubles the resolution:
``y = Conv1x1(Up2(RCU2(x + RCU1(skip))))`` (the deepest block has no ``x`` and computes ``RCU2(skip)``), where
``RCU(z) = z + Conv3x3(ReLU(Conv3x3(ReLU(z))))`` and ``Up2`` is bilinear with aligned corners.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    """``z + conv2(relu(conv1(relu(z))))``; keeps ``(B, C, H, W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.conv2(F.relu(self.conv1(F.relu(z))))


class FeatureFusionBlock(nn.Module):
    """One refinenet level: ``(B, C, h, w)`` (+ skip of the same shape) → ``(B, C, 2h, 2w)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(channels)  # checkpoint key name
        self.resConfUnit2 = ResidualConvUnit(channels)  # checkpoint key name
        self.out_conv = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        merged = coarse if skip is None else coarse + self.resConfUnit1(skip)
        refined = self.resConfUnit2(merged)
        upsampled = F.interpolate(refined, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(upsampled)
