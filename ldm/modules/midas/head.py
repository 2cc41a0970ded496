"""The DPT depth head: fused features at half resolution → one non-negative (inverse) depth channel."""

from __future__ import annotations

from torch import nn

HIDDEN = 32  # channels between the two 3x3 convs and the 1x1 output conv


def depth_head(channels: int = 256, non_negative: bool = True) -> nn.Sequential:
    """``(B, C, H/2, W/2)`` → ``(B, 1, H, W)``.

    conv3x3 ``C → C/2`` → bilinear ×2 (aligned corners) → conv3x3 ``C/2 → 32`` → ReLU → conv1x1 ``32 → 1``
    → ReLU when ``non_negative`` (depth ≥ 0). Positions 0, 2, 4 hold the checkpoint's ``output_conv.{0,2,4}``.
    """
    half = channels // 2
    stages: list[nn.Module] = [nn.Conv2d(channels, half, 3, padding=1)]
    stages.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))
    stages += [nn.Conv2d(half, HIDDEN, 3, padding=1), nn.ReLU(), nn.Conv2d(HIDDEN, 1, 1)]
    if non_negative:
        stages.append(nn.ReLU())
    return nn.Sequential(*stages)
