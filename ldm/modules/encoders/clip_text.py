"""The CLIP ViT-L/14 text tower with Stable Diffusion's state-dict layout under transformers 4.x and 5.x.

SD v1 checkpoints hold ``cond_stage_model.transformer.text_model.<...>``. In transformers 4.x a ``CLIPTextModel``
keeps its layers under ``text_model`` itself; in 5.x its layers sit at the top, so we nest it one level down.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel


def vit_l14_text_config() -> CLIPTextConfig:
    """The architecture of ``openai/clip-vit-large-patch14``'s text tower (123.1 M parameters)."""
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
        layer_norm_eps=1e-5,
    )


class TextModelPrefix(nn.Module):
    """Holds a transformers-5 ``CLIPTextModel`` as ``text_model`` so its keys read ``text_model.<...>``."""

    def __init__(self, text_model: CLIPTextModel) -> None:
        super().__init__()
        self.text_model = text_model

    def forward(self, input_ids: torch.Tensor | None = None, *args, **kwargs):
        """``CLIPTextModel.forward`` with every argument (``output_hidden_states`` for CLIP skip, masks, ...)."""
        return self.text_model(input_ids, *args, **kwargs)


def with_sd_layout(model: CLIPTextModel) -> nn.Module:
    """``model`` itself (transformers 4.x) or wrapped (5.x), so that ``.text_model.embeddings`` exists."""
    if "text_model" in dict(model.named_children()):
        return model
    return TextModelPrefix(model)
