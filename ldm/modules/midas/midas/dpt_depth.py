"""``DPT`` and ``DPTDepthModel`` with the original constructors, on ``ldm.modules.midas.dpt``.

Backbones: "vitb_rn50_384" (DPT-Hybrid, the SD 2.x depth model), "vitl16_384" (DPT-Large), "vitb16_384"
(DPT-Base); all built with timm and random weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ldm.modules.midas import dpt
from ldm.modules.midas.head import depth_head
from ldm.modules.midas.midas.base_model import BaseModel


class DPT(BaseModel, dpt.DPT):
    """``ldm.modules.midas.dpt.DPT`` (image → ``head`` output, any head) with :meth:`BaseModel.load`.

    Constructor: ``DPT(head, features=256, backbone="vitb_rn50_384", readout="project", channels_last=False,
    use_bn=False)``.
    """


class DPTDepthModel(DPT):
    """DPT with the depth head: ``(B, 3, H, W)`` (H, W multiples of 32) → relative inverse depth ``(B, H, W)``.

    :param path: a local weight file loaded strictly after building (none: random weights).
    :param non_negative: end the head with a ReLU (depth ≥ 0).
    :param kwargs: ``features``, ``backbone``, ``readout``, ``channels_last``, ``use_bn`` of :class:`DPT`.
    """

    def __init__(self, path: str | Path | None = None, non_negative: bool = True, **kwargs: Any) -> None:
        super().__init__(depth_head(kwargs.get("features", 256), non_negative), **kwargs)
        if path is not None:
            self.load(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(1)
