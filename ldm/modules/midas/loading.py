"""The original MiDaS loader functions of ``ldm.modules.midas.api``: the released weight files' paths, the input
transform of a model type, and the network with its weights read from such a file (nothing is downloaded).

Only the DPT models are built here (``dpt_hybrid``, which the SD 2.x depth model uses, and ``dpt_large``); the
``midas_v21`` models need torch.hub code and are refused with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.checkpoint import load_checkpoint, state_dict_of
from ldm.modules.midas.dpt import DPTDepthModel
from ldm.modules.midas.transforms import prepare_midas_input

#: The released MiDaS weight files, relative to the working directory (the original's paths).
ISL_PATHS = {
    "dpt_large": "midas_models/dpt_large-midas-2f21e586.pt",
    "dpt_hybrid": "midas_models/dpt_hybrid-midas-501f0c75.pt",
    "midas_v21": "",
    "midas_v21_small": "",
}
DPT_BACKBONES = {"dpt_hybrid": "vitb_rn50_384", "dpt_large": "vitl16_384"}


def _check_model_type(model_type: str) -> None:
    if model_type not in DPT_BACKBONES:
        raise ValueError(
            f"MiDaS model_type {model_type!r} is not available here; use one of {sorted(DPT_BACKBONES)} "
            "(the midas_v21 models need torch.hub code)"
        )


class MidasTransform:
    """``{"image": (H, W, 3) float array in [0, 1]}`` → the same dict with ``"image"`` the network input
    ``(3, h, w)`` float32: resized by the "minimal" rule to multiples of 32 near 384 (bicubic) and normalised
    with mean 0.5, std 0.5 (so [0, 1] → [-1, 1])."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32)
        resized = prepare_midas_input(image.permute(2, 0, 1)[None] * 2.0 - 1.0)[0]
        return {**sample, "image": np.ascontiguousarray(resized.numpy(), dtype=np.float32)}


def load_midas_transform(model_type: str) -> MidasTransform:
    """The input transform of ``model_type`` (``dpt_hybrid`` / ``dpt_large``)."""
    _check_model_type(model_type)
    return MidasTransform()


def load_model(model_type: str) -> tuple[DPTDepthModel, MidasTransform]:
    """``(network in eval mode with the weights of ISL_PATHS[model_type], its transform)``; a missing weight file
    is one error naming it and where the weights come from otherwise (the SD 2.x depth checkpoint)."""
    _check_model_type(model_type)
    path = Path(ISL_PATHS[model_type])
    if not path.is_file():
        raise FileNotFoundError(
            f"MiDaS weights {path} not found: put the released file there, or build "
            "ldm.modules.midas.api.MiDaSInference and load the SD 2.x depth checkpoint (its depth_model.* weights)"
        )
    model = DPTDepthModel(backbone=DPT_BACKBONES[model_type], non_negative=True)
    model.load_state_dict(state_dict_of(load_checkpoint(path)), strict=True)
    return model.eval(), MidasTransform()
