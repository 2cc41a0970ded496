"""SD 2.x's text encoder: ``FrozenOpenCLIPEmbedder`` (``cond_stage_model.*`` without the prefix) ↔ transformers'
``CLIPTextModel`` (the layout diffusers' SD 2.x pipelines use).

Per residual block ``k``: ``ln_1/ln_2`` ↔ ``layer_norm1/2``; the fused ``attn.in_proj_{weight,bias}`` ``(3W, …)``
↔ ``self_attn.{q,k,v}_proj`` (rows ``[0, W)``, ``[W, 2W)``, ``[2W, 3W)``); ``attn.out_proj`` ↔
``self_attn.out_proj``; ``mlp.c_fc/c_proj`` ↔ ``mlp.fc1/fc2``. ``token_embedding`` and ``positional_embedding``
become the embedding tables, ``ln_final`` the ``final_layer_norm``.

SD 2.x conditions on ``ln_final`` of the *penultimate* block's output, while ``CLIPTextModel.last_hidden_state``
is ``final_layer_norm`` after its last layer; so the diffusers model keeps only the blocks that are used
(``num_hidden_layers = N − 1``). What it cannot hold (the unused blocks, ``text_projection``, ``logit_scale``) is
returned separately as ``extra`` so that a round trip is exact.
"""

from __future__ import annotations

import math
import re

import torch

from ldm.convert.rename import StateDict

BLOCK = re.compile(r"model\.transformer\.resblocks\.(\d+)\.(.+)")
LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
BLOCK_PARTS = {
    "ln_1.": "layer_norm1.",
    "ln_2.": "layer_norm2.",
    "attn.out_proj.": "self_attn.out_proj.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}
TOP_PARTS = {
    "model.token_embedding.weight": "embeddings.token_embedding.weight",
    "model.positional_embedding": "embeddings.position_embedding.weight",
    "model.ln_final.weight": "final_layer_norm.weight",
    "model.ln_final.bias": "final_layer_norm.bias",
}
QKV = ("q_proj", "k_proj", "v_proj")
#: CLIP's initial temperature, ``log(1 / 0.07)``: ``logit_scale`` of a pipeline that carries no ``extra``.
DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)


def block_count(state_dict: StateDict) -> int:
    """The number of residual blocks of an OpenCLIP text tower state dict."""
    return 1 + max(int(m.group(1)) for k in state_dict if (m := BLOCK.fullmatch(k)))


def openclip_text_config(state_dict: StateDict, heads: int, layer_idx: int) -> dict:
    """``CLIPTextConfig`` keyword arguments for the first ``N − layer_idx`` blocks of the tower in ``state_dict``
    (``layer_idx`` 1 for ``layer="penultimate"``), ``heads`` attention heads, exact GELU."""
    vocab, width = state_dict["model.token_embedding.weight"].shape
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": state_dict["model.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": block_count(state_dict) - layer_idx,
        "num_attention_heads": heads,
        "max_position_embeddings": state_dict["model.positional_embedding"].shape[0],
        "projection_dim": state_dict["model.text_projection"].shape[1],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0,
    }


def openclip_to_diffusers(state_dict: StateDict, kept_layers: int) -> tuple[dict, dict]:
    """``(CLIPTextModel state dict, extra)`` of a ``FrozenOpenCLIPEmbedder`` state dict: blocks ``0 … kept_layers−1``
    go to ``encoder.layers``, everything a ``CLIPTextModel`` has no place for to ``extra`` (keys unchanged)."""
    text, extra = {}, {}
    for key, value in state_dict.items():
        block = BLOCK.fullmatch(key)
        if key in TOP_PARTS:
            text[TOP_PARTS[key]] = value
        elif block is None or int(block.group(1)) >= kept_layers:
            extra[key] = value
        else:
            index, part = block.groups()
            target = f"encoder.layers.{index}."
            if part.startswith("attn.in_proj_"):
                suffix = part.removeprefix("attn.in_proj_")
                for name, chunk in zip(QKV, value.chunk(3, dim=0), strict=True):
                    text[f"{target}self_attn.{name}.{suffix}"] = chunk.clone()
                continue
            old = next((p for p in BLOCK_PARTS if part.startswith(p)), None)
            if old is None:
                raise ValueError(f"no conversion rule for OpenCLIP text key {key!r} (layer scale is not supported)")
            text[target + BLOCK_PARTS[old] + part[len(old) :]] = value
    return text, extra


def _stand_in_extra(text: StateDict, blocks: int) -> dict[str, torch.Tensor]:
    """Zero weights for one unused last block, zero ``text_projection`` and CLIP's initial ``logit_scale``: what a
    pipeline without ``extra`` gets (SD 2.x never computes with them)."""
    width = text["final_layer_norm.weight"].shape[0]
    dtype = text["final_layer_norm.weight"].dtype
    block = {
        key.removeprefix("model.transformer.resblocks.0."): torch.zeros_like(value)
        for key, value in openclip_from_diffusers(_first_layer(text), {}).items()
        if key.startswith("model.transformer.resblocks.0.")
    }
    stand_in = {f"model.transformer.resblocks.{blocks}.{part}": value for part, value in block.items()}
    stand_in["model.text_projection"] = torch.zeros(width, width, dtype=dtype)
    stand_in["model.logit_scale"] = torch.tensor(DEFAULT_LOGIT_SCALE, dtype=dtype)
    return stand_in


def _first_layer(text: StateDict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in text.items() if k.startswith("encoder.layers.0.")}


def openclip_from_diffusers(text: StateDict, extra: StateDict | None) -> dict[str, torch.Tensor]:
    """A ``FrozenOpenCLIPEmbedder`` state dict from a ``CLIPTextModel`` state dict plus the ``extra`` tensors
    :func:`openclip_to_diffusers` set aside; ``None`` (a pipeline from elsewhere) puts in zeros for one unused last
    block and ``text_projection``, and ``logit_scale = log(1/0.07)``."""
    top = {new: old for old, new in TOP_PARTS.items()}
    parts = {new: old for old, new in BLOCK_PARTS.items()}
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in text.items():
        key = key.removeprefix("text_model.")
        layer = LAYER.fullmatch(key)
        if key in top:
            out[top[key]] = value
        elif key.endswith("position_ids"):
            continue
        elif layer is None:
            raise ValueError(f"no conversion rule for CLIPTextModel key {key!r}")
        elif layer.group(2).startswith("self_attn.") and layer.group(2).split(".")[1] in QKV:
            _, name, suffix = layer.group(2).split(".")
            fused.setdefault((layer.group(1), suffix), {})[name] = value
        else:
            index, part = layer.groups()
            old = next(p for p in parts if part.startswith(p))
            out[f"model.transformer.resblocks.{index}.{parts[old]}{part[len(old):]}"] = value
    for (index, suffix), pieces in fused.items():
        out[f"model.transformer.resblocks.{index}.attn.in_proj_{suffix}"] = torch.cat([pieces[n] for n in QKV])
    if extra is None:
        kept = 1 + max(int(m.group(1)) for k in text if (m := LAYER.fullmatch(k.removeprefix("text_model."))))
        extra = _stand_in_extra({k.removeprefix("text_model."): v for k, v in text.items()}, kept)
    out.update(extra)
    return out
