"""``MidasNet_small``: MiDaS v2.1 small (EfficientNet-Lite3 encoder), and ``fuse_model`` for quantization."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn
from torch.ao.quantization import fuse_modules
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ldm.modules.midas.dpt import decode_levels
from ldm.modules.midas.head import depth_head
from ldm.modules.midas.midas.base_model import BaseModel
from ldm.modules.midas.midas.blocks import FeatureFusionBlock_custom, scratch_module
from ldm.modules.midas.midas.encoders import ENCODERS


class MidasNet_small(BaseModel):
    """Image ``(B, 3, H, W)`` (H, W multiples of 32) → relative inverse depth ``(B, H, W)``.

    :param path: a local weight file loaded strictly after building (none: random weights; nothing downloads).
    :param features: decoder width ``F``; with ``blocks["expand"]`` level ``k`` (1..4) works at ``F·2^(k-1)``
        channels and each fusion block halves its width, so the head always sees ``F``.
    :param backbone: "efficientnet_lite3" (or "resnext101_wsl"), see ``encoders``.
    :param non_negative: end the head with a ReLU (depth ≥ 0).
    :param exportable: passed to timm (layer choices for export; the same weights and numbers).
    :param channels_last: feed channels-last input (a memory layout; the numbers do not change).
    :param align_corners: of the fusion blocks' bilinear upsampling (the head's never aligns corners).
    :param blocks: ``{"expand": bool}``.
    """

    def __init__(self, path: str | Path | None = None, features: int = 64, backbone: str = "efficientnet_lite3",
                 non_negative: bool = True, exportable: bool = True, channels_last: bool = False,
                 align_corners: bool = True, blocks: Mapping[str, bool] = MappingProxyType({"expand": True})) -> None:
        super().__init__()
        if backbone not in ENCODERS:
            raise ValueError(f"unknown MidasNet_small backbone {backbone!r}; choose one of {sorted(ENCODERS)}")
        self.channels_last = channels_last
        self.blocks = blocks
        self.backbone = backbone
        self.expand = bool(blocks.get("expand", False))
        build, widths = ENCODERS[backbone]
        self.pretrained = build(exportable)
        level_features = [features * 2**level if self.expand else features for level in range(len(widths))]
        activation = nn.ReLU()
        refiners = [FeatureFusionBlock_custom(width, activation, expand=self.expand and level > 0,
                                              align_corners=align_corners)
                    for level, width in enumerate(level_features)]
        head = depth_head(features, non_negative, align_corners=False)
        self.scratch = scratch_module(widths, level_features, refiners, head)
        self.scratch.activation = activation
        if path:
            self.load(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return decode_levels(self.scratch, self.pretrained(x)).squeeze(1)


def _fold_norm_act(parent: nn.Module, conv_name: str, norm_name: str) -> None:
    """Fold a timm ``BatchNormAct2d`` (batch norm + activation in one module) into the conv before it."""
    conv, norm = parent.get_submodule(conv_name), parent.get_submodule(norm_name)
    parent.set_submodule(conv_name, fuse_conv_bn_eval(conv, norm))
    parent.set_submodule(norm_name, nn.Sequential(norm.drop, norm.act))


def fuse_model(m: nn.Module) -> None:
    """Fold batch norms into the convolutions before them, in place (for quantization; ``m`` in eval mode).

    Walking ``m.named_modules()`` in order, every ``nn.Conv2d`` directly followed by an ``nn.BatchNorm2d`` (exact
    types) is fused with ``torch.ao.quantization.fuse_modules``: with the ``nn.ReLU`` that follows into a
    ``ConvReLU2d``, otherwise conv + norm into one conv (``W' = W·γ/σ``, ``b' = (b − μ)·γ/σ + β``); the fused
    modules become ``Identity``. A pair is fused when some module follows it, as in the original. timm's
    EfficientNet joins batch norm and activation in one ``BatchNormAct2d``: after an ``nn.Conv2d`` its norm is
    folded the same way and the module is replaced by its activation, so MidasNet_small fuses the convs the
    original's separate-module encoder does. Outputs are unchanged up to rounding.
    """
    walk = list(m.named_modules())
    for (conv_name, conv), (norm_name, norm), (next_name, after) in zip(walk, walk[1:], walk[2:]):
        if type(conv) is not nn.Conv2d or not isinstance(norm, nn.BatchNorm2d):
            continue
        if hasattr(norm, "act") and hasattr(norm, "drop"):
            _fold_norm_act(m, conv_name, norm_name)
        elif type(norm) is nn.BatchNorm2d:
            group = [conv_name, norm_name, next_name] if type(after) is nn.ReLU else [conv_name, norm_name]
            fuse_modules(m, group, inplace=True)
