"""The MiDaS depth head: fused features at half resolution → one non-negative (inverse) depth channel."""

from __future__ import annotations

from torch import nn

HIDDEN = 32  # channels between the two 3x3 convs and the 1x1 output conv


def depth_head(channels: int = 256, non_negative: bool = True, *, mid_channels: int | None = None,
               align_corners: bool = True) -> nn.Sequential:
    """``(B, C, H/2, W/2)`` → ``(B, 1, H, W)``.

    conv3x3 ``C → M`` (``M = mid_channels``, default ``C/2``) → bilinear ×2 (``align_corners``) → conv3x3
    ``M → 32`` → ReLU → conv1x1 ``32 → 1`` → ReLU when ``non_negative`` (depth ≥ 0). Positions 0, 2, 4 hold the
    checkpoint's ``output_conv.{0,2,4}``. DPT uses aligned corners; MidasNet / MidasNet_small do not.
    """
    mid = channels // 2 if mid_channels is None else mid_channels
    stages: list[nn.Module] = [nn.Conv2d(channels, mid, 3, padding=1)]
    stages.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align_corners))
    stages += [nn.Conv2d(mid, HIDDEN, 3, padding=1), nn.ReLU(), nn.Conv2d(HIDDEN, 1, 1)]
    if non_negative:
        stages.append(nn.ReLU())
    return nn.Sequential(*stages)
