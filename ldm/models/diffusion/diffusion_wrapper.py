"""The denoising network as ``DDPM`` holds it (``DiffusionWrapper``), frozen sub-models, and setting errors.

``ldm.models.diffusion.ddpm`` re-exports :class:`DiffusionWrapper` and :func:`disabled_train`.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn

from ldm.util import SettingError, instantiate_from_config

CONDITIONING_KINDS = (None, "concat", "crossattn", "hybrid", "adm")


def disabled_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement ``train`` of a frozen sub-model: it stays in eval mode whatever its parent does."""
    return self


def freeze_module(model: nn.Module) -> nn.Module:
    """Eval mode for good (``train`` becomes :func:`disabled_train`) and no gradients."""
    model = model.eval()
    model.train = types.MethodType(disabled_train, model)
    for param in model.parameters():
        param.requires_grad = False
    return model


def require_checkpoint_file(config: Any, where: str) -> None:
    """Raise FileNotFoundError naming ``<where>.params.ckpt_path`` when it is set to a missing file."""
    params = config.get("params") if hasattr(config, "get") else None
    ckpt_path = params.get("ckpt_path") if params is not None else None
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(
            f"{where}.params.ckpt_path = {str(ckpt_path)!r}: no such file. Download the released model to that "
            "path, point the key at your copy, or set it to null to build the model without these weights."
        )


class DiffusionWrapper(pl.LightningModule):
    """Holds the UNet as ``diffusion_model`` and feeds it the conditioning as ``conditioning_key`` says.

    ``None``: ε(x, t); ``concat``: ε([x, *c_concat], t) on channels; ``crossattn``: ε(x, t, context=cat(c_crossattn,
    tokens)); ``hybrid``: both; ``adm``: ε(x, t, y=c_crossattn[0]) (class-embedding UNets). A LightningModule,
    so it has ``device`` and ``dtype``.
    """

    def __init__(self, diff_model_config: Any, conditioning_key: str | None):
        super().__init__()
        if conditioning_key not in CONDITIONING_KINDS:
            raise SettingError(
                f"conditioning_key {conditioning_key!r} is unknown; use one of {list(CONDITIONING_KINDS)}."
            )
        self.diffusion_model = instantiate_from_config(diff_model_config, name="unet_config")
        self.conditioning_key = conditioning_key

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: list[torch.Tensor] | None = None,
        c_crossattn: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)`` → the UNet output ``(B, C_out, H, W)``."""
        key = self.conditioning_key
        if key is None:
            return self.diffusion_model(x, t)
        if key == "concat":
            return self.diffusion_model(torch.cat([x, *c_concat], dim=1), t)
        if key == "crossattn":
            return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))
        if key == "hybrid":
            return self.diffusion_model(torch.cat([x, *c_concat], dim=1), t, context=torch.cat(c_crossattn, 1))
        return self.diffusion_model(x, t, y=c_crossattn[0])
