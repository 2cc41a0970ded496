"""LoRA files merged into a checkpoint's state dict (scripts/merge_lora.py): W ← W + m · (α / r) · U D.

The layers a file names are found on the model the config builds, on the meta device (no weights are read or
allocated); the checkpoint's tensors are then changed in place of their keys, so the merged checkpoint has exactly
the keys of the input. EMA copies (``model_ema.*``) of adapted UNet weights receive the same ΔW.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ldm.checkpoint import ema_key
from ldm.lora.files import LoraFile
from ldm.lora.merge import resolve_layers
from ldm.util import instantiate_from_config

#: Config keys naming weight files, which building the architecture does not need.
_WEIGHT_FILE_KEYS = ("ckpt_path", "clip_stats_path")


def _without_weight_files(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: None if key in _WEIGHT_FILE_KEYS else _without_weight_files(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_without_weight_files(value) for value in node]
    return node


def architecture(config: Any) -> nn.Module:
    """The model of ``config.model`` built on the meta device, every ``ckpt_path`` left out: layer names only."""
    model_config = OmegaConf.to_container(config.model, resolve=False)
    with torch.device("meta"):
        return instantiate_from_config(OmegaConf.create(_without_weight_files(model_config)))


@torch.no_grad()
def merge_into_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module, lora: LoraFile,
                          multiplier: float = 1.0) -> int:
    """Add m · (α / r) · U D of every layer of ``lora`` to ``state_dict[<layer path>.weight]`` (and to its EMA copy
    when present), computed in float32 and stored in the tensor's dtype; returns the number of layers merged.
    ``model`` names the layers (:func:`architecture`); a layer whose weight the checkpoint lacks raises
    ``ValueError`` naming the key."""
    resolved = resolve_layers(model, lora)
    for path, weights in resolved.items():
        key = f"{path}.weight"
        if key not in state_dict:
            raise ValueError(f"LoRA file {lora.path} adapts {path}, but the checkpoint has no {key!r}; "
                             "use the checkpoint of the model the config describes")
        keys = [key] + ([ema_key(key)] if path.startswith("model.") and ema_key(key) in state_dict else [])
        for name in keys:
            weight = state_dict[name]
            state_dict[name] = (weight.float() + weights.delta(weight.shape, multiplier)).to(weight.dtype)
    return len(resolved)


def merged_metadata(metadata: Mapping[str, Any], loras: list[tuple[str, float]]) -> dict[str, Any]:
    """The input checkpoint's plain metadata plus ``lora_merged``: the files and weights merged, in order."""
    return {**metadata, "lora_merged": [{"file": path, "weight": weight} for path, weight in loras]}
