"""LoRA files: the kohya sd-scripts / AUTOMATIC1111 ``.safetensors`` layout, read and written.

A file holds, for every adapted layer ``<name>`` (see :mod:`ldm.lora.names`), three tensors:

- ``<name>.lora_down.weight``: D, ``(r, in)`` (a Linear) or ``(r, in, k, k)`` (a Conv2d);
- ``<name>.lora_up.weight``: U, ``(out, r)`` or ``(out, r, 1, 1)``;
- ``<name>.alpha``: α, a scalar (missing: α = r);

and the layer's weight becomes ``W + m · (α / r) · U D`` for a multiplier m (the ``--lora file:m`` weight).
``<name>`` is a kohya name (``lora_unet_…``, ``lora_te_…``) or, in files written for models without those names,
a module path of the ``LatentDiffusion`` (``model.diffusion_model.input_blocks.1.1.…``). The header metadata
follows kohya's ``ss_*`` keys (``ss_network_dim``, ``ss_network_alpha``, ...).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ldm.checkpoint import load_checkpoint, save_safetensors

DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


@dataclass(frozen=True)
class LoraWeights:
    """One adapted layer: ``down`` D ``(r, in[, k, k])``, ``up`` U ``(out, r[, 1, 1])`` and ``alpha`` α."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        """α / r, the factor kohya and peft put in front of U D."""
        return self.alpha / self.rank

    def delta(self, shape: torch.Size, multiplier: float = 1.0) -> torch.Tensor:
        """ΔW = m · (α / r) · U D in float32, laid out as a weight of ``shape``: for a Linear ``(out, r) @ (r, in)``;
        for a Conv2d ``(out, r) @ (r, in·k·k)`` reshaped to ``(out, in, k, k)`` (a k×k conv followed by a 1×1 conv
        is the k×k conv with these weights)."""
        product = self.up.float().flatten(1) @ self.down.float().flatten(1)
        if product.numel() != math.prod(shape):
            raise ValueError(f"a LoRA of shape up {tuple(self.up.shape)} @ down {tuple(self.down.shape)} cannot "
                             f"adapt a weight of shape {tuple(shape)}")
        return (multiplier * self.scale) * product.reshape(shape)


@dataclass
class LoraFile:
    """The layers of a LoRA file by name (kohya name or module path) and its header metadata."""

    path: str
    layers: dict[str, LoraWeights]
    metadata: dict[str, str] = field(default_factory=dict)


def read_lora(path: str | os.PathLike) -> LoraFile:
    """The LoRA layers of ``path`` (``.safetensors``, or a weights-only pickle of the same flat keys).

    Raises ``ValueError`` naming the file and a key when the file holds something other than plain LoRA pairs
    (LoHa / LoKr / DoRA / full-weight differences) or a layer lacks its up or down matrix.
    """
    checkpoint = load_checkpoint(path, config_key="--lora")
    tensors = checkpoint.get("state_dict", checkpoint)
    metadata = {str(k): str(v) for k, v in (checkpoint.get("metadata") or {}).items()}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        suffix = next((s for s in (DOWN, UP, ALPHA) if key.endswith(s)), None)
        if suffix is None or not isinstance(value, torch.Tensor):
            raise ValueError(f"LoRA file {path}: key {key!r} is not a LoRA down/up/alpha tensor; only plain LoRA "
                             "files (kohya's networks.lora layout) can be applied, not LoHa/LoKr/DoRA variants")
        parts.setdefault(key[: -len(suffix)], {})[suffix] = value
    layers = {}
    for name, found in parts.items():
        if DOWN not in found or UP not in found:
            missing = DOWN if DOWN not in found else UP
            raise ValueError(f"LoRA file {path}: layer {name!r} has no {name}{missing} tensor; the file is incomplete")
        down, up = found[DOWN], found[UP]
        alpha = float(found[ALPHA]) if ALPHA in found else float(down.shape[0])
        layers[name] = LoraWeights(down=down, up=up, alpha=alpha)
    if not layers:
        raise ValueError(f"LoRA file {path} holds no LoRA layers")
    return LoraFile(path=str(path), layers=layers, metadata=metadata)


def write_lora(path: str | os.PathLike, layers: Mapping[str, LoraWeights], metadata: Mapping[str, str] | None = None,
               dtype: torch.dtype | None = None) -> None:
    """Write ``layers`` to ``path`` (``.safetensors``, atomically) in the kohya layout, tensors cast to ``dtype``
    (None: as they are; α is always float32, as kohya stores it)."""
    tensors = {}
    for name, weights in layers.items():
        tensors[name + DOWN] = weights.down.detach().to(dtype or weights.down.dtype)
        tensors[name + UP] = weights.up.detach().to(dtype or weights.up.dtype)
        tensors[name + ALPHA] = torch.tensor(float(weights.alpha), dtype=torch.float32)
    if Path(path).suffix != ".safetensors":
        raise ValueError(f"LoRA output {path}: LoRA files are written as .safetensors; use that suffix")
    save_safetensors(path, tensors, metadata)


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and its multiplier m (``--lora FILE[:M]``)."""

    path: Path
    weight: float = 1.0


def parse_lora_spec(text: str) -> LoraSpec:
    """``FILE`` or ``FILE:WEIGHT`` (weight default 1.0; a path that exists as written is taken whole, so a path
    holding a colon still works). An argparse ``type``: a bad weight raises ``ArgumentTypeError`` as one line."""
    if os.path.isfile(text) or ":" not in text:
        return LoraSpec(Path(text))
    path, _, weight = text.rpartition(":")
    try:
        value = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the weight {weight!r} after the last ':' is not a number; write FILE:0.8 (or FILE for 1.0)"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: the weight {weight!r} is not finite; write e.g. FILE:0.8")
    if not path:
        raise argparse.ArgumentTypeError(f"{text!r}: no file before ':'; write FILE:0.8")
    return LoraSpec(Path(path), value)
