"""SD v1's text encoder: ``FrozenCLIPEmbedder`` (``cond_stage_model.*`` without the prefix) ↔ transformers'
``CLIPTextModel``. The layers are the same; only the ``transformer.`` / ``text_model.`` prefixes differ."""

from __future__ import annotations

import torch

from ldm.convert.rename import StateDict


def clip_to_diffusers(state_dict: StateDict, target_keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """``FrozenCLIPEmbedder`` keys ``transformer.text_model.*`` → a ``CLIPTextModel``'s keys.

    transformers 5 keeps its layers at the top (``embeddings.*``), 4.x under ``text_model.*``; ``target_keys``
    (the target model's state-dict keys) decides, default 5.x. The ``position_ids`` buffer is dropped.
    """
    nested = target_keys is not None and any(k.startswith("text_model.") for k in target_keys)
    out = {}
    for key, value in state_dict.items():
        if key.endswith("embeddings.position_ids"):
            continue
        inner = key.removeprefix("transformer.")
        out[inner if nested else inner.removeprefix("text_model.")] = value
    return out
