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

CONDITIONING_KINDS = (None, "concat", "crossattn", "hybrid", "adm", "hybrid-adm", "crossattn-adm")
#: The wrapper inputs each conditioning kind needs (``adm`` takes its vector from ``c_crossattn[0]``).
REQUIRED_INPUTS = {
    "concat": ("c_concat",),
    "crossattn": ("c_crossattn",),
    "hybrid": ("c_concat", "c_crossattn"),
    "adm": ("c_crossattn",),
    "hybrid-adm": ("c_concat", "c_crossattn", "c_adm"),
    "crossattn-adm": ("c_crossattn", "c_adm"),
}


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

    With c = cat(c_crossattn, tokens) and x̃ = cat([x, *c_concat], channels):

    ====================  ============================================
    ``None``              ε(x, t)
    ``concat``            ε(x̃, t)
    ``crossattn``         ε(x, t, context=c)
    ``hybrid``            ε(x̃, t, context=c)
    ``adm``               ε(x, t, y=c_crossattn[0]) (class labels)
    ``hybrid-adm``        ε(x̃, t, context=c, y=c_adm) (x4 upscaler)
    ``crossattn-adm``     ε(x, t, context=c, y=c_adm) (unCLIP)
    ====================  ============================================

    ``sequential_crossattn: true`` beside the UNet config's ``target`` (not passed to the UNet) hands the
    ``c_crossattn`` list itself to the UNet instead of its concatenation. A LightningModule, so it has ``device``
    and ``dtype``.
    """

    def __init__(self, diff_model_config: Any, conditioning_key: str | None):
        super().__init__()
        if conditioning_key not in CONDITIONING_KINDS:
            raise SettingError(
                f"conditioning_key {conditioning_key!r} is unknown; use one of {list(CONDITIONING_KINDS)}."
            )
        diff_model_config, sequential = _without_option(diff_model_config, "sequential_crossattn")
        self.sequential_cross_attn = bool(sequential)
        self.diffusion_model = instantiate_from_config(diff_model_config, name="unet_config")
        self.conditioning_key = conditioning_key

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: list[torch.Tensor] | None = None,
        c_crossattn: list[torch.Tensor] | None = None,
        c_adm: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)`` → the UNet output ``(B, C_out, H, W)``."""
        key = self.conditioning_key
        if key is None:
            return self.diffusion_model(x, t)
        given = {"c_concat": c_concat, "c_crossattn": c_crossattn, "c_adm": c_adm}
        missing = [name for name in REQUIRED_INPUTS[key] if given[name] is None]
        if missing:
            raise ValueError(
                f"conditioning_key {key!r} needs the conditioning as a dict with {list(REQUIRED_INPUTS[key])}; "
                f"{missing} not given."
            )
        if key == "adm":
            return self.diffusion_model(x, t, y=c_crossattn[0])
        needs = REQUIRED_INPUTS[key]
        inputs = torch.cat([x, *c_concat], dim=1) if "c_concat" in needs else x
        kwargs: dict[str, Any] = {}
        if "c_crossattn" in needs:
            kwargs["context"] = list(c_crossattn) if self.sequential_cross_attn else torch.cat(c_crossattn, 1)
        if key.endswith("-adm"):
            kwargs["y"] = c_adm
        return self.diffusion_model(inputs, t, **kwargs)


def _without_option(config: Any, name: str) -> tuple[Any, Any]:
    """``(config without the top-level key name, its value or None)``; the caller's config is left as it is."""
    if not hasattr(config, "keys") or name not in config:
        return config, None
    rest = {key: config[key] for key in config.keys() if key != name}
    return rest, config[name]
