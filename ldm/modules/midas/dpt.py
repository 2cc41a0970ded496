"""DPT depth network (Ranftl et al., "Vision Transformers for Dense Prediction", 2021) as MiDaS v3 ships it.

``DPT`` = ``pretrained`` (``backbone.ViTFeatureEncoder``: four maps at strides 4, 8, 16, 32) + ``scratch``
(``FusionDecoder``: per-level 3x3 convs to a common width, four fusion blocks, a head). ``DPTDepthModel`` is DPT
with the depth head. Module names are the checkpoint's state-dict keys.
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
from ldm.modules.midas.reassemble import READOUTS


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
    # ViT-B/16: blocks 2, 5, 8, 11.
    "vitb16_384": BackboneSpec("vit_base_patch16_384", (), (2, 5, 8, 11), (96, 192, 384, 768)),
}


def decode_levels(scratch: nn.Module, maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The refine-net pass of every MiDaS decoder over its four encoder maps (finest first).

    ``scratch`` holds ``layer{k}_rn``, ``refinenet{k}`` (k = 1..4) and ``output_conv``:
    ``r_k = layer{k}_rn(m_k)``; ``p_4 = refinenet4(r_4)``, ``p_k = refinenet{k}(p_{k+1}, r_k)`` for k = 3, 2, 1
    (each doubles the size); returns ``output_conv(p_1)``.
    """
    reduced = [getattr(scratch, f"layer{k}_rn")(m) for k, m in enumerate(maps, start=1)]
    path = scratch.refinenet4(reduced[3])  # stride 16
    path = scratch.refinenet3(path, reduced[2])  # stride 8
    path = scratch.refinenet2(path, reduced[1])  # stride 4
    path = scratch.refinenet1(path, reduced[0])  # stride 2
    return scratch.output_conv(path)


class FusionDecoder(nn.Module):
    """``scratch``: maps at strides 4..32 → ``head`` output at full size (default: depth ``(B, 1, H, W)``).

    ``layer{k}_rn``: 3x3 conv, no bias, to ``features`` channels; ``refinenet{k}``: fusion blocks (batch norm in
    their residual units with ``use_bn``); ``output_conv``: ``head``, or ``depth_head(features, non_negative)``.
    """

    def __init__(self, in_widths: Sequence[int], features: int = 256, non_negative: bool = True, *,
                 head: nn.Module | None = None, use_bn: bool = False) -> None:
        super().__init__()
        for level, width in enumerate(in_widths, start=1):
            self.add_module(f"layer{level}_rn", nn.Conv2d(width, features, kernel_size=3, padding=1, bias=False))
        for level in range(1, len(in_widths) + 1):
            self.add_module(f"refinenet{level}", FeatureFusionBlock(features, bn=use_bn))
        self.output_conv = depth_head(features, non_negative) if head is None else head

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return decode_levels(self, maps)


class DPT(nn.Module):
    """DPT with any ``head``: image ``(B, 3, H, W)`` (H, W multiples of 32) → ``head(p_1)``.

    :param head: maps the fused ``(B, features, H/2, W/2)`` path to the output (it becomes ``scratch.output_conv``).
    :param backbone: a key of :data:`BACKBONES`; the timm ViT is built with random weights (nothing downloaded).
    :param readout: "ignore", "add" or "project" (see ``reassemble``).
    :param channels_last: feed the network channels-last input (a memory layout; the numbers do not change).
    :param use_bn: batch norm in the fusion blocks' residual units.
    """

    def __init__(self, head: nn.Module, features: int = 256, backbone: str = "vitb_rn50_384",
                 readout: str = "project", channels_last: bool = False, use_bn: bool = False) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown DPT backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
        if readout not in READOUTS:
            raise ValueError(f"unknown DPT readout {readout!r}; use one of {READOUTS}")
        spec = BACKBONES[backbone]
        self.channels_last = channels_last
        vit = timm.create_model(spec.timm_name, pretrained=False)
        self.pretrained = ViTFeatureEncoder(vit, spec.stage_taps, spec.block_taps, spec.widths, readout)
        self.scratch = FusionDecoder(spec.widths, features, head=head, use_bn=use_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.scratch(self.pretrained(x))


class DPTDepthModel(DPT):
    """MiDaS DPT: image ``(B, 3, H, W)`` in [-1, 1] (H, W multiples of 32) → relative inverse depth ``(B, H, W)``.

    Built with random weights (``timm.create_model(..., pretrained=False)``); the weights come from a checkpoint.
    """

    def __init__(self, backbone: str = "vitb_rn50_384", features: int = 256, non_negative: bool = True) -> None:
        super().__init__(depth_head(features, non_negative), features, backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(1)
