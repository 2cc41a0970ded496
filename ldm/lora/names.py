"""LoRA file names of a model's layers: the kohya sd-scripts / AUTOMATIC1111 names and our module paths.

A kohya LoRA file names each adapted layer by its module path in the *diffusers* layout with the dots turned into
underscores, after a prefix for the network it belongs to:

==========================================================================  =========================================
module path here (``LatentDiffusion``)                                       name in the LoRA file
==========================================================================  =========================================
``model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q``  ``lora_unet_down_blocks_0_attentions_0_
                                                                             transformer_blocks_0_attn1_to_q``
``model.diffusion_model.middle_block.1.proj_in``                            ``lora_unet_mid_block_attentions_0_proj_in``
``model.diffusion_model.output_blocks.3.1.transformer_blocks.0.ff.net.2``   ``lora_unet_up_blocks_1_attentions_0_
                                                                             transformer_blocks_0_ff_net_2``
``cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj``  ``lora_te_text_model_encoder_layers_0_
                                                                             self_attn_q_proj``
==========================================================================  =========================================

The UNet's LDM → diffusers block renames are those of the diffusers conversion (:mod:`ldm.convert.unet`); the
text encoder drops the ``transformer.`` of ``FrozenCLIPEmbedder`` (transformers' ``CLIPTextModel`` layout). Other
UNets (no diffusers layout) and other text encoders (the demo's ``BERTEmbedder``) are named by their own module
paths: ``lora_unet_<path in the UNet>`` and ``lora_te_<path in the conditioner>``, dots → underscores.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch.nn as nn

from ldm.convert.unet import unet_to_diffusers

logger = logging.getLogger(__name__)

UNET_PREFIX = "lora_unet_"
TEXT_ENCODER_PREFIX = "lora_te_"
#: Where the UNet and the text encoder sit in a ``LatentDiffusion``.
UNET_PATH = "model.diffusion_model"
TEXT_ENCODER_PATH = "cond_stage_model"
#: ``FrozenCLIPEmbedder`` holds transformers' ``CLIPTextModel`` under this attribute; kohya names start below it.
_CLIP_HOLDER = "transformer."


def weight_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(path, layer)`` of every ``nn.Linear`` / ``nn.Conv2d`` under ``module`` (the layers a LoRA can adapt).

    A layer already wrapped by a peft adapter is reported once, under the wrapper's path (the path of the
    original layer in the model before injection), never as ``….base_layer``.
    """
    for path, layer in module.named_modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and not _inside_adapter(path):
            yield (path[: -len(".base_layer")] if path.endswith(".base_layer") else path), layer


def _inside_adapter(path: str) -> bool:
    """Whether ``path`` is a peft adapter's own layer (``….lora_A.default``, ``….lora_B.default``)."""
    parts = path.split(".")
    return "lora_A" in parts or "lora_B" in parts or "lora_embedding_A" in parts or "lora_embedding_B" in parts


def _underscored(path: str) -> str:
    return path.replace(".", "_")


def unet_names(unet: nn.Module, paths: list[str]) -> dict[str, str]:
    """``{UNet-relative module path: kohya name}``: the diffusers layout where the UNet has one (SD v1 / 2.x-like:
    :func:`ldm.convert.unet.unet_to_diffusers`), otherwise the module path itself."""
    try:
        renamed = unet_to_diffusers(unet, {f"{path}.weight": None for path in paths})
    except ValueError as error:
        logger.info("LoRA names: the UNet has no diffusers layout (%s); naming layers by their module paths", error)
        return {path: UNET_PREFIX + _underscored(path) for path in paths}
    diffusers_paths = [key[: -len(".weight")] for key in renamed]
    return {path: UNET_PREFIX + _underscored(new) for path, new in zip(paths, diffusers_paths, strict=True)}


def text_encoder_name(path: str) -> str:
    """The kohya name of a conditioner-relative path: ``transformer.text_model.…`` → ``lora_te_text_model_…``."""
    if path.startswith(_CLIP_HOLDER + "text_model."):
        path = path[len(_CLIP_HOLDER) :]
    return TEXT_ENCODER_PREFIX + _underscored(path)


def lora_names(model: nn.Module) -> dict[str, str]:
    """``{kohya name: module path in model}`` for every Linear / Conv2d layer of the UNet (``model.diffusion_model``)
    and of the text encoder (``cond_stage_model``) of a ``LatentDiffusion``."""
    names: dict[str, str] = {}
    unet = model.get_submodule(UNET_PATH)
    paths = [path for path, _ in weight_layers(unet)]
    for path, name in unet_names(unet, paths).items():
        names[name] = f"{UNET_PATH}.{path}"
    encoder = getattr(model, TEXT_ENCODER_PATH, None)
    if isinstance(encoder, nn.Module) and encoder is not getattr(model, "first_stage_model", None):
        for path, _ in weight_layers(encoder):
            names[text_encoder_name(path)] = f"{TEXT_ENCODER_PATH}.{path}"
    return names
