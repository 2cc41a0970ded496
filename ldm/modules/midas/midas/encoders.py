"""The convolutional MiDaS encoders (MiDaS v2.1): four stages read at strides 4, 8, 16, 32.

Both are built without weights and keep the original's ``pretrained.layer{1..4}`` layout, so the released
weight files load strictly:

- "resnext101_wsl" (``MidasNet``): torchvision's ResNeXt-101 32x8d, the architecture of the WSL-Images hub
  model; ``layer1`` = stem (conv1, bn1, relu, maxpool) + the first residual stage, then ``layer2..4``.
- "efficientnet_lite3" (``MidasNet_small``): timm's ``tf_efficientnet_lite3`` ("same" padding, BN eps 1e-3,
  ReLU6), whose keys equal those of the gen-efficientnet hub model; ``layer1`` = stem (``conv_stem``, ``bn1``,
  slot 2 a placeholder for the separate stem activation: timm's ``bn1`` applies it) + block stages 0-1,
  ``layer2`` = stage 2, ``layer3`` = stages 3-4, ``layer4`` = stages 5-6.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import timm
import torch
from torch import nn


class StagedEncoder(nn.Module):
    """``layer1 → layer2 → layer3 → layer4``; the forward returns all four outputs ``[(B, C_k, H/2^(k+1), ...)]``."""

    def __init__(self, stages: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(stages) != 4:
            raise ValueError(f"a MiDaS encoder has four stages, got {len(stages)}")
        for index, stage in enumerate(stages, start=1):
            self.add_module(f"layer{index}", stage)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.children():
            x = stage(x)
            maps.append(x)
        return maps


def resnext101_wsl(exportable: bool = True) -> StagedEncoder:
    """ResNeXt-101 32x8d (random weights) as four stages of widths 256, 512, 1024, 2048 (``exportable``: no
    effect, there for the common builder signature)."""
    from torchvision.models import resnext101_32x8d  # imported here: only MidasNet needs torchvision

    net = resnext101_32x8d(weights=None)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
    return StagedEncoder([stem, net.layer2, net.layer3, net.layer4])


def efficientnet_lite3(exportable: bool = True) -> StagedEncoder:
    """EfficientNet-Lite3 (random weights) as four stages of widths 32, 48, 136, 384."""
    net = timm.create_model("tf_efficientnet_lite3", pretrained=False, exportable=exportable)
    stages = net.blocks
    stem = nn.Sequential(net.conv_stem, net.bn1, nn.Identity(), *stages[0:2])
    return StagedEncoder([stem, nn.Sequential(stages[2]), nn.Sequential(*stages[3:5]), nn.Sequential(*stages[5:])])


#: name → (builder(exportable), the four stage widths)
ENCODERS: dict[str, tuple[Callable[[bool], StagedEncoder], tuple[int, int, int, int]]] = {
    "resnext101_wsl": (resnext101_wsl, (256, 512, 1024, 2048)),
    "efficientnet_lite3": (efficientnet_lite3, (32, 48, 136, 384)),
}
