"""DPT depth network (Ranftl et al., "Vision Transformers for Dense Prediction", 2021) as MiDaS v3 ships it.

``DPTDepthModel`` = ``pretrained`` (``backbone.ViTFeatureEncoder``: four maps at strides 4, 8, 16, 32) +
``scratch`` (``FusionDecoder``: per-level 3x3 convs to a common width, four fusion blocks, the depth head).
Module names are the checkpoint's state-dict keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import timm
import torch
from torch import nn

from ldm.modules.midas.backbone import ViTFeatureEncoder
from ldm.modules.midas.fusion import FeatureFusionBlock
from ldm.modules.midas.head import depth_head


@dataclass(frozen=True)
class BackboneSpec:
    """Which timm ViT to build and where DPT reads it."""

    timm_name: str
    stage_taps: tuple[int, ...]
    block_taps: tuple[int, ...]
    widths: tuple[int, int, int, int]


BACKBONES: dict[str, BackboneSpec] = {
    # ViT-B/16 on a 3-stage ResNet-50 (timm 0.6 "vit_base_resnet50_384"): ResNet stages 0, 1 + ViT blocks 8, 11.
    "vitb_rn50_384": BackboneSpec("vit_base_r50_s16_384", (0, 1), (8, 11), (256, 512, 768, 768)),
    # ViT-L/16: blocks 5, 11, 17, 23.
    "vitl16_384": BackboneSpec("vit_large_patch16_384", (), (5, 11, 17, 23), (256, 512, 1024, 1024)),
}


class FusionDecoder(nn.Module):
    """``scratch``: maps at strides 4..32 → depth ``(B, 1, H, W)``.

    ``r_k = layer{k}_rn(m_k)`` (3x3, no bias, to ``features`` channels);
    ``p_4 = refinenet4(r_4)``, ``p_k = refinenet{k}(p_{k+1}, r_k)`` for k = 3, 2, 1 (each doubles the size);
    depth ``= output_conv(p_1)``.
    """

    def __init__(self, in_widths: Sequence[int], features: int = 256, non_negative: bool = True) -> None:
        super().__init__()
        for level, width in enumerate(in_widths, start=1):
            self.add_module(f"layer{level}_rn", nn.Conv2d(width, features, kernel_size=3, padding=1, bias=False))
        for level in range(1, len(in_widths) + 1):
            self.add_module(f"refinenet{level}", FeatureFusionBlock(features))
        self.output_conv = depth_head(features, non_negative)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        reduced = [getattr(self, f"layer{k}_rn")(m) for k, m in enumerate(maps, start=1)]  # (B, F, H/4·2**k...)
        path = self.refinenet4(reduced[3])  # stride 16
        path = self.refinenet3(path, reduced[2])  # stride 8
        path = self.refinenet2(path, reduced[1])  # stride 4
        path = self.refinenet1(path, reduced[0])  # stride 2
        return self.output_conv(path)  # (B, 1, H, W)


class DPTDepthModel(nn.Module):
    """MiDaS DPT: image ``(B, 3, H, W)`` in [-1, 1] (H, W multiples of 32) → relative inverse depth ``(B, H, W)``.

    Built with random weights (``timm.create_model(..., pretrained=False)``); the weights come from a checkpoint.
    """

    def __init__(self, backbone: str = "vitb_rn50_384", features: int = 256, non_negative: bool = True) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown DPT backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
        spec = BACKBONES[backbone]
        vit = timm.create_model(spec.timm_name, pretrained=False)
        self.pretrained = ViTFeatureEncoder(vit, spec.stage_taps, spec.block_taps, spec.widths)
        self.scratch = FusionDecoder(spec.widths, features, non_negative)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scratch(self.pretrained(x)).squeeze(1)
