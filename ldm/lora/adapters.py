"""Trainable LoRA adapters (peft) on a ``LatentDiffusion``'s UNet attention and, optionally, its text encoder.

An adapted layer computes ``y = W x + (α / r) · U D dropout(x)`` with D ``(r, in)`` drawn as peft draws it and
U ``(out, r)`` zero, so a freshly injected model computes exactly what the base model does. The adapters are
peft's (``inject_adapter_in_model``): the adapted layer becomes a wrapper holding the original as ``base_layer``
(state-dict keys ``….to_q.base_layer.weight``, ``….to_q.lora_A.default.weight``, ``….lora_B.default.weight``);
:func:`base_state_dict` gives the base model's keys back and :func:`adapter_layers` the (U, D, α) to save.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from ldm.lora.files import LoraWeights
from ldm.lora.names import TEXT_ENCODER_PATH, UNET_PATH, lora_names, weight_layers
from ldm.modules.attention import SpatialTransformer
from ldm.util import ConfigError, SettingError, to_container

ADAPTER = "default"
#: The attention projections of CrossAttention (SpatialTransformer blocks): kohya's default UNet targets minus the
#: projections and feed-forward, which ``targets`` can add (``proj_in``, ``proj_out``, ``ff.net.0.proj``, ``ff.net.2``).
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: CLIP's attention projections (``FrozenCLIPEmbedder``) and the x-transformer's (``BERTEmbedder``): whichever exist.
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "to_q", "to_k", "to_v", "to_out")


@dataclass(frozen=True)
class LoraSettings:
    """The ``lora_config`` of a LoRA fine-tune.

    :param rank: r, the inner dimension of U D.
    :param alpha: α; the update is scaled by α / r (None: α = r, scale 1).
    :param dropout: dropout on the adapter's input while training.
    :param targets: layers adapted in every SpatialTransformer, as paths within it (``to_q``, ``attn2.to_k``, ...).
    :param text_encoder: also adapt the text encoder.
    :param text_encoder_targets: its Linear layers to adapt, matched on the end of their paths.
    """

    rank: int = 4
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = UNET_TARGETS
    text_encoder: bool = False
    text_encoder_targets: tuple[str, ...] = TEXT_ENCODER_TARGETS

    @property
    def alpha_value(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> LoraSettings:
        """Settings from a config mapping; unknown keys and out-of-range values raise ``ConfigError`` naming the
        ``lora_config`` key."""
        values = dict(to_container(config) or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"lora_config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        for key in ("targets", "text_encoder_targets"):
            if key in values:
                values[key] = tuple(values[key])
        settings = cls(**values)
        if not isinstance(settings.rank, int) or settings.rank < 1:
            raise SettingError(f"lora_config.rank = {settings.rank!r}; use a whole number of 1 or more (e.g. 4)")
        if settings.alpha_value <= 0:
            raise SettingError(f"lora_config.alpha = {settings.alpha!r}; use a positive number (null: alpha = rank)")
        if not 0.0 <= settings.dropout < 1.0:
            raise SettingError(f"lora_config.dropout = {settings.dropout!r}; use a value in [0, 1)")
        return settings


def _matches(path: str, targets: tuple[str, ...]) -> bool:
    return any(path == t or path.endswith("." + t) for t in targets)


def unet_targets(unet: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """UNet-relative paths of the layers inside SpatialTransformers whose path within the block matches
    ``targets``. A 1x1-conv projection (``use_linear_in_transformer: false``) raises ``SettingError``: the block reads
    its weight directly, so a peft wrapper there would be skipped (LoRA *files* that adapt it still merge)."""
    chosen = []
    for block_path, block in unet.named_modules():
        if not isinstance(block, SpatialTransformer):
            continue
        for path, layer in weight_layers(block):
            if not _matches(path, targets):
                continue
            if isinstance(layer, nn.Conv2d):
                raise SettingError(
                    f"lora_config.targets: {block_path}.{path} is a 1x1 convolution (SD v1-style proj_in/proj_out), "
                    "which cannot carry a trainable adapter here; drop it from targets"
                )
            chosen.append(f"{block_path}.{path}")
    return chosen


def text_encoder_targets(encoder: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Paths of the text encoder's Linear layers whose path ends with one of ``targets``."""
    return [path for path, layer in weight_layers(encoder) if isinstance(layer, nn.Linear) and _matches(path, targets)]


def _inject(module: nn.Module, paths: list[str], settings: LoraSettings) -> None:
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha_value, lora_dropout=settings.dropout,
                        target_modules=paths, bias="none", init_lora_weights=True)
    inject_adapter_in_model(config, module, adapter_name=ADAPTER)


def inject_lora(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Freeze every parameter of the ``LatentDiffusion`` ``model`` and add trainable peft adapters to the layers
    ``settings`` chooses; returns their paths in ``model``. U starts at zero: the model's function is unchanged."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    unet = model.get_submodule(UNET_PATH)
    chosen = unet_targets(unet, settings.targets)
    if not chosen:
        raise SettingError(f"lora_config.targets {list(settings.targets)} match no layer of the UNet's "
                           "SpatialTransformers; use names such as to_q, to_k, to_v, to_out.0")
    _inject(unet, chosen, settings)
    adapted = [f"{UNET_PATH}.{path}" for path in chosen]
    if settings.text_encoder:
        encoder = getattr(model, TEXT_ENCODER_PATH, None)
        encoder_paths = [] if not isinstance(encoder, nn.Module) else text_encoder_targets(
            encoder, settings.text_encoder_targets)
        if not encoder_paths:
            raise SettingError(f"lora_config.text_encoder is true but text_encoder_targets "
                               f"{list(settings.text_encoder_targets)} match no Linear layer of the conditioner")
        _inject(encoder, encoder_paths, settings)
        adapted += [f"{TEXT_ENCODER_PATH}.{path}" for path in encoder_paths]
    return adapted


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters (U and D of every adapted layer), the only ones a LoRA fine-tune trains."""
    return [p for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name]


def adapter_layers(model: nn.Module) -> dict[str, LoraWeights]:
    """``{module path: (D, U, α)}`` of every peft adapter in ``model`` (detached, on their device)."""
    layers = {}
    for path, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            layers[path] = LoraWeights(down=module.lora_A[ADAPTER].weight.detach(),
                                       up=module.lora_B[ADAPTER].weight.detach(),
                                       alpha=float(module.lora_alpha[ADAPTER]))
    return layers


def kohya_layers(model: nn.Module) -> dict[str, LoraWeights]:
    """:func:`adapter_layers` under their kohya names (:mod:`ldm.lora.names`), ready for :func:`write_lora`."""
    name_of = {path: name for name, path in lora_names(model).items()}
    return {name_of[path]: weights for path, weights in adapter_layers(model).items()}


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict in the layout of the model without adapters: ``….base_layer.`` folded back into
    its layer and the adapters' own tensors left out (the weights are the base's, not merged)."""
    state = {}
    for key, value in model.state_dict().items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    return state


def kohya_metadata(settings: LoraSettings, base_model_version: str, base_model_name: str = "") -> dict[str, str]:
    """The ``ss_*`` header kohya sd-scripts writes (and AUTOMATIC1111 shows), as strings."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(settings.rank),
        "ss_network_alpha": str(settings.alpha_value),
        "ss_network_dropout": str(settings.dropout),
        "ss_network_args": json.dumps({"targets": list(settings.targets), "text_encoder": settings.text_encoder}),
        "ss_network_train_unet_only": str(not settings.text_encoder),
        "ss_base_model_version": base_model_version,
        "ss_v2": str(base_model_version.startswith("sd_v2")),
        "ss_sd_model_name": base_model_name,
    }


def base_model_version(model: nn.Module) -> str:
    """kohya's ``ss_base_model_version`` for ``model``: ``sd_v1`` (CLIP text encoder), ``sd_v2`` (OpenCLIP), else
    ``ldm`` with the conditioner's class name (no kohya value exists for other models)."""
    encoder = type(getattr(model, TEXT_ENCODER_PATH, None)).__name__
    if encoder == "FrozenCLIPEmbedder":
        return "sd_v1"
    if encoder.startswith("FrozenOpenCLIP"):
        return "sd_v2"
    return f"ldm_{encoder}"
