"""``MiDaSInference``: the frozen MiDaS depth estimator that ``LatentDepth2ImageDiffusion`` conditions on.

``model_type`` names the MiDaS release as the original API does; the network is built with random weights and
its ``depth_model.model.*`` weights come from the SD 2.x depth checkpoint (nothing is downloaded).
"""

from __future__ import annotations

import torch
from torch import nn

from ldm.models.diffusion.diffusion_wrapper import disabled_train as disabled_train
from ldm.modules.midas.loading import DPT_BACKBONES, build_network
from ldm.modules.midas.loading import ISL_PATHS as ISL_PATHS
from ldm.modules.midas.loading import load_midas_transform as load_midas_transform
from ldm.modules.midas.loading import load_model as load_model

# Built in the original from torch.hub code (ResNeXt-101 WSL, EfficientNet-Lite3); here from torchvision / timm.
HUB_ONLY = ("midas_v21", "midas_v21_small")
#: model type → DPT backbone (imported from here by ``ldm.data.util``).
DPT_BACKBONE = DPT_BACKBONES


class MiDaSInference(nn.Module):
    """Frozen monocular depth: ``(B, 3, H, W)`` image in [-1, 1] → ``(B, 1, H, W)`` relative inverse depth ≥ 0.

    ``H`` and ``W`` must be multiples of 32 (what the MiDaS transform produces). The network stays in eval mode
    (``train()`` does not switch it), its parameters need no gradient, and the forward runs without autograd.
    """

    MODEL_TYPES_ISL = ("dpt_large", "dpt_hybrid", *HUB_ONLY)

    def __init__(self, model_type: str) -> None:
        super().__init__()
        if model_type not in self.MODEL_TYPES_ISL:
            raise ValueError(f"MiDaS model_type {model_type!r} is unknown; use one of {list(self.MODEL_TYPES_ISL)}")
        self.model_type = model_type
        self.model = build_network(model_type)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> MiDaSInference:
        """Always eval: dropout-free inference whatever mode a parent module asks for."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        depth = self.model(x.to(dtype))  # (B, H, W)
        return depth.unsqueeze(1)  # (B, 1, H, W)
