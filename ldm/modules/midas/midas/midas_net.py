"""``MidasNet``: MiDaS v2.1 (Ranftl et al., 2020), a ResNeXt-101 WSL encoder and a refine-net decoder."""

from __future__ import annotations

from pathlib import Path

import torch

from ldm.modules.midas.dpt import decode_levels
from ldm.modules.midas.head import depth_head
from ldm.modules.midas.midas.base_model import BaseModel
from ldm.modules.midas.midas.blocks import FeatureFusionBlock, scratch_module
from ldm.modules.midas.midas.encoders import ENCODERS

HEAD_MID_CHANNELS = 128  # MidasNet's head narrows to 128 channels whatever ``features`` is


class MidasNet(BaseModel):
    """Image ``(B, 3, H, W)`` (H, W multiples of 32) → relative inverse depth ``(B, H, W)``.

    ``pretrained``: ResNeXt-101 32x8d stages at strides 4..32 (widths 256..2048, see ``encoders``); ``scratch``:
    3x3 convs to ``features``, four MidasNet fusion blocks (no output conv), the head conv3x3 ``features → 128``
    → bilinear ×2 (corners not aligned) → conv3x3 ``128 → 32`` → ReLU → conv1x1 ``32 → 1`` (→ ReLU when
    ``non_negative``). Built with random weights (nothing downloaded); ``path`` loads a local weight file.
    """

    def __init__(self, path: str | Path | None = None, features: int = 256, non_negative: bool = True) -> None:
        super().__init__()
        build, widths = ENCODERS["resnext101_wsl"]
        self.pretrained = build(True)
        head = depth_head(features, non_negative, mid_channels=HEAD_MID_CHANNELS, align_corners=False)
        refiners = [FeatureFusionBlock(features) for _ in widths]
        self.scratch = scratch_module(widths, [features] * len(widths), refiners, head)
        if path:
            self.load(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return decode_levels(self.scratch, self.pretrained(x)).squeeze(1)
