"""Merging LoRA files into a model's weights: W ← W + m · (α / r) · U D for every layer a file names.

Merged weights cost nothing at sampling time, and several files add up (each with its own multiplier m). Where
the model keeps an EMA copy (``model_ema``, which the sampling scripts swap in), the same ΔW is added to it, so the
EMA and the raw weights both carry the LoRA.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn as nn

from ldm.lora.files import LoraFile, LoraSpec, LoraWeights, read_lora
from ldm.lora.names import TEXT_ENCODER_PREFIX, UNET_PREFIX, lora_names

logger = logging.getLogger(__name__)

#: Prefixes of kohya names for networks this model family does not have (SDXL's two text encoders).
_FOREIGN_PREFIXES = {"lora_te1_": "SDXL", "lora_te2_": "SDXL", "lora_transformer_": "SD3 / Flux"}


def resolve_layers(model: nn.Module, lora: LoraFile) -> dict[str, LoraWeights]:
    """``{module path in model: weights}`` for every layer of ``lora``; ``ValueError`` as one line naming the file
    and the first unmatched name when a layer matches no Linear / Conv2d of the model."""
    names = lora_names(model)
    paths = set(names.values())
    resolved, unknown = {}, []
    for name, weights in lora.layers.items():
        path = names.get(name) if name.startswith((UNET_PREFIX, TEXT_ENCODER_PREFIX)) else name
        if path in paths:
            resolved[path] = weights
        else:
            unknown.append(name)
    if unknown:
        foreign = next((kind for prefix, kind in _FOREIGN_PREFIXES.items() if unknown[0].startswith(prefix)), None)
        hint = (f"it is a {foreign} LoRA" if foreign else
                "the file was made for another architecture (e.g. SD 2.x vs v1, another text encoder)")
        raise ValueError(f"LoRA file {lora.path}: {len(unknown)} of {len(lora.layers)} layers name no layer of this "
                         f"model (first: {unknown[0]!r}); {hint}: use a LoRA trained on this model's architecture")
    return resolved


def _weight_of(layer: nn.Module) -> torch.Tensor:
    """The weight a LoRA adds to: the layer's own, or that of the layer a peft adapter wraps."""
    return getattr(layer, "base_layer", layer).weight


def _ema_shadow(model: nn.Module, path: str) -> torch.Tensor | None:
    """The EMA buffer of ``<path>.weight`` when the model keeps one (``model_ema`` tracks ``model.*``)."""
    ema = getattr(model, "model_ema", None) if getattr(model, "use_ema", False) else None
    if ema is None or not path.startswith("model."):
        return None
    shadow_name = ema.m_name2s_name.get(f"{path[len('model.'):]}.weight")
    return None if shadow_name is None else getattr(ema, shadow_name)


@torch.no_grad()
def merge_lora(model: nn.Module, lora: LoraFile, multiplier: float = 1.0) -> int:
    """Add m · (α / r) · U D of every layer of ``lora`` to the model's weights (and EMA copies), computed in float32
    and stored in each weight's dtype; returns the number of layers changed."""
    resolved = resolve_layers(model, lora)
    for path, weights in resolved.items():
        targets = [_weight_of(model.get_submodule(path)), _ema_shadow(model, path)]
        for tensor in (t for t in targets if t is not None):
            delta = weights.delta(tensor.shape, multiplier).to(tensor.device)
            tensor.copy_((tensor.float() + delta).to(tensor.dtype))
    return len(resolved)


def apply_lora_files(model: nn.Module, specs: Iterable[LoraSpec]) -> None:
    """Merge every ``--lora FILE[:M]`` into ``model`` in order, logging one line per file."""
    for spec in specs:
        lora = read_lora(spec.path)
        count = merge_lora(model, lora, spec.weight)
        logger.info("LoRA %s: merged into %d layers with weight %g", spec.path, count, spec.weight)
