"""The original MiDaS loader functions of ``ldm.modules.midas.api``: the released weight files' paths, the input
transform of a model type, and the network with its weights read from such a file (nothing is downloaded).

All four releases build without downloads: the DPT models (``dpt_hybrid``, which the SD 2.x depth model uses,
and ``dpt_large``) and the MiDaS v2.1 models (``midas_v21``: ResNeXt-101 from torchvision's architecture,
``midas_v21_small``: EfficientNet-Lite3 from timm's). As in the original, ``ISL_PATHS`` holds no file for the v2.1
models: set ``ISL_PATHS["midas_v21"]`` to the released weights to load them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.checkpoint import load_checkpoint, state_dict_of
from ldm.modules.midas.dpt import DPTDepthModel
from ldm.modules.midas.midas.midas_net import MidasNet
from ldm.modules.midas.midas.midas_net_custom import MidasNet_small
from ldm.modules.midas.midas.transforms import INTER_CUBIC, NormalizeImage, PrepareForNet, Resize
from ldm.modules.midas.transforms import prepare_midas_input

#: The released MiDaS weight files, relative to the working directory (the original's paths).
ISL_PATHS = {
    "dpt_large": "midas_models/dpt_large-midas-2f21e586.pt",
    "dpt_hybrid": "midas_models/dpt_hybrid-midas-501f0c75.pt",
    "midas_v21": "",
    "midas_v21_small": "",
}
DPT_BACKBONES = {"dpt_hybrid": "vitb_rn50_384", "dpt_large": "vitl16_384"}
#: The MiDaS v2.1 releases: network input side (the "upper_bound" resize target) and ImageNet normalisation.
V21_SIDES = {"midas_v21": 384, "midas_v21_small": 256}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _check_model_type(model_type: str) -> None:
    if model_type not in ISL_PATHS:
        raise ValueError(f"MiDaS model_type {model_type!r} is unknown; use one of {sorted(ISL_PATHS)}")


def build_network(model_type: str) -> torch.nn.Module:
    """The network of ``model_type`` with random weights (nothing downloaded), as the original builds it."""
    _check_model_type(model_type)
    if model_type in DPT_BACKBONES:
        return DPTDepthModel(backbone=DPT_BACKBONES[model_type], non_negative=True)
    if model_type == "midas_v21":
        return MidasNet(None, non_negative=True)
    return MidasNet_small(None, features=64, backbone="efficientnet_lite3", exportable=True, non_negative=True,
                          blocks={"expand": True})


class _Compose:
    """Apply transforms to a sample dict in order."""

    def __init__(self, steps: list[Any]) -> None:
        self.steps = steps

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        for step in self.steps:
            sample = step(sample)
        return sample


class MidasTransform:
    """``{"image": (H, W, 3) float array in [0, 1]}`` → the same dict with ``"image"`` the network input
    ``(3, h, w)`` float32: resized by the "minimal" rule to multiples of 32 near 384 (bicubic) and normalised
    with mean 0.5, std 0.5 (so [0, 1] → [-1, 1])."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32)
        resized = prepare_midas_input(image.permute(2, 0, 1)[None] * 2.0 - 1.0)[0]
        return {**sample, "image": np.ascontiguousarray(resized.numpy(), dtype=np.float32)}


def load_midas_transform(model_type: str) -> Any:
    """The input transform of ``model_type``: for the DPT models the "minimal" resize near 384 and mean/std 0.5;
    for the v2.1 models the "upper_bound" resize to 384 (256 small) keeping the aspect ratio, multiples of 32,
    bicubic, and ImageNet mean/std; both map ``{"image": (H, W, 3) in [0, 1]}`` to a ``(3, h, w)`` float32 input."""
    _check_model_type(model_type)
    if model_type in DPT_BACKBONES:
        return MidasTransform()
    side = V21_SIDES[model_type]
    return _Compose([
        Resize(side, side, resize_target=None, keep_aspect_ratio=True, ensure_multiple_of=32,
               resize_method="upper_bound", image_interpolation_method=INTER_CUBIC),
        NormalizeImage(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        PrepareForNet(),
    ])


def load_model(model_type: str) -> tuple[torch.nn.Module, Any]:
    """``(network in eval mode with the weights of ISL_PATHS[model_type], its transform)``; a missing weight file
    is one error naming it and where the weights come from otherwise (the SD 2.x depth checkpoint)."""
    _check_model_type(model_type)
    if not ISL_PATHS[model_type]:
        raise FileNotFoundError(
            f"MiDaS {model_type}: no weights file is configured (as in the original); set "
            f"ldm.modules.midas.api.ISL_PATHS[{model_type!r}] to the released .pt file"
        )
    path = Path(ISL_PATHS[model_type])
    if not path.is_file():
        raise FileNotFoundError(
            f"MiDaS weights {path} not found: put the released file there, or build "
            "ldm.modules.midas.api.MiDaSInference and load the SD 2.x depth checkpoint (its depth_model.* weights)"
        )
    model = build_network(model_type)
    model.load_state_dict(state_dict_of(load_checkpoint(path)), strict=True)
    return model.eval(), load_midas_transform(model_type)
