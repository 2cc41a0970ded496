"""OpenCLIP conditioners of Stable Diffusion 2.x, on the ``open_clip_torch`` package (2.20 and later, 3.x).

- ``FrozenOpenCLIPEmbedder``: caption → per-token features of the OpenCLIP text tower ``(B, 77, width)`` (SD 2.x
  cross-attention context; ViT-H-14: width 1024), from its last or penultimate residual block.
- ``FrozenOpenCLIPImageEmbedder``: image in ``[-1, 1]`` → pooled OpenCLIP image embedding ``(B, embed_dim)``
  (unCLIP-H: 1024).

Weights: ``version`` names open_clip pretrained weights (a tag such as ``"laion2b_s32b_b79k"``, used only when a
previous download left them in the local cache) or a local checkpoint file; ``None`` builds the architecture alone.
Nothing is ever downloaded: without local weights the architecture is built with random weights, which the SD 2.x
checkpoint (``cond_stage_model.model.*`` / ``embedder.model.*``) then sets.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldm.modules.encoders.base import AbstractEncoder
from ldm.modules.encoders.clip_image import OPENAI_CACHE, CLIPImageInput, default_device

logger = logging.getLogger(__name__)

#: File names open_clip stores on the Hugging Face hub (safetensors first, as open_clip prefers it).
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def registered_arch(arch: str) -> str:
    """An open_clip model name: a registered one as is, or a ``.json`` model config registered under its stem."""
    if arch.endswith(".json") and os.path.isfile(arch):
        open_clip.add_model_config(arch)
        return Path(arch).stem
    if ":" not in arch and arch not in open_clip.list_models():
        raise ValueError(
            f"open_clip has no model config named {arch!r}; register it first with "
            "open_clip.add_model_config('<path>/<name>.json') or pass the path of that .json file as `arch`"
        )
    return arch


def _hub_cached_file(hub_entry: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename = os.path.split(hub_entry)
    for candidate in (filename,) if filename else HUB_WEIGHT_FILES:
        found = try_to_load_from_cache(repo_id, candidate)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def local_weights(arch: str, version: str | None) -> str | None:
    """The local file holding ``version`` of ``arch``: the path itself, or the cached download of a pretrained tag.

    None when ``version`` is None or the tag's weights were never downloaded (a warning says so; never downloads).
    """
    if not version:
        return None
    if os.path.isfile(version):
        return version
    source = get_pretrained_cfg(arch, version)
    if not source:
        raise ValueError(
            f"version={version!r} is neither a file nor a pretrained tag of open_clip {arch!r} "
            f"(tags: {list_pretrained_tags_by_model(arch)}); use one of those, a checkpoint path, or null"
        )
    found = source.get("file") or (_hub_cached_file(source["hf_hub"]) if source.get("hf_hub") else None)
    if not found and source.get("url"):
        candidate = OPENAI_CACHE.expanduser() / os.path.basename(source["url"])
        found = str(candidate) if candidate.is_file() else None
    if not found:
        logger.warning(
            "open_clip weights %s/%s are not in the local cache (never downloaded here); building %s with RANDOM "
            "weights. Load the Stable Diffusion 2.x checkpoint to set them, or point `version` at a local file.",
            arch,
            version,
            arch,
        )
    return found


def build_open_clip(arch: str, version: str | None) -> nn.Module:
    """open_clip ``CLIP`` model ``arch`` (fp32, eval) with the weights of ``local_weights(arch, version)`` if any,
    built on the current default device (``meta`` inside ``with torch.device("meta")``: shapes only)."""
    name = registered_arch(arch)
    device = default_device()
    weights = None if device.type == "meta" else local_weights(name, version)
    return open_clip.create_model(name, pretrained=weights, device=device).eval()


class OpenCLIPConditioner(AbstractEncoder):
    """One tower of an open_clip ``CLIP`` model (:func:`build_open_clip`) as a conditioner: the other tower
    (``drop``: ``"visual"`` or ``"transformer"``) is deleted, the rest stays under ``model.*`` as in SD 2.x
    checkpoints. ``device``, ``max_length`` and ``layer`` are stored as given; ``freeze`` makes it :meth:`freeze`."""

    def __init__(
        self, arch: str, version: str | None, device: str, max_length: int, layer: str, drop: str, freeze: bool
    ) -> None:
        super().__init__()
        clip = build_open_clip(arch, version)
        delattr(clip, drop)
        self.model = clip
        self.device = device
        self.max_length = max_length
        self.layer = layer
        if freeze:
            self.freeze()

    def freeze(self) -> None:
        """Eval mode and ``requires_grad=False`` for every parameter."""
        self.model = self.model.eval()
        for parameter in self.parameters():
            parameter.requires_grad = False

    def encode(self, text: Any) -> torch.Tensor:
        """``self(text)``: the conditioning of a batch of captions (or, for the image embedder, images; the
        original names the argument ``text`` in both)."""
        return self(text)


class FrozenOpenCLIPEmbedder(OpenCLIPConditioner):
    """Captions → OpenCLIP text features ``(B, context_length, width)``: ``ln_final`` of the residual stream after
    the last block (``layer="last"``) or the one before it (``"penultimate"``, what SD 2.x uses).

    ``h₀ = token_embedding(ids) + positional_embedding``, ``h_k = block_k(h_{k−1})`` with the causal mask, output
    ``ln_final(h_{N−layer_idx})``; ``ids`` are open_clip's BPE tokens ``<start> … <end>`` padded with 0, truncated
    to the context length (77) keeping ``<end>`` last. The image tower is deleted, so the state dict holds
    ``model.{token_embedding, positional_embedding, transformer, ln_final, text_projection, logit_scale}``.

    ``device`` is a plain, assignable attribute kept for client code (``cond_stage_model.device = "cpu"``); token ids
    always go to the device of the weights, so the default ``"cuda"`` works on CPU-only machines. ``max_length``
    is stored but, as in SD 2.x, the ids always span the model's context length.
    """

    LAYERS = ("last", "penultimate")

    def __init__(
        self,
        arch: str = "ViT-H-14",
        version: str | None = "laion2b_s32b_b79k",
        device: str = "cuda",
        max_length: int = 77,
        freeze: bool = True,
        layer: str = "last",
    ) -> None:
        if layer not in self.LAYERS:
            raise ValueError(f"FrozenOpenCLIPEmbedder: layer={layer!r} is not one of {list(self.LAYERS)}")
        super().__init__(arch, version, device, max_length, layer, drop="visual", freeze=freeze)
        self.layer_idx = self.LAYERS.index(layer)

    def tokenize(self, text: str | Sequence[str]) -> torch.Tensor:
        """Captions → ids ``(B, context_length)`` int64 (``open_clip.tokenize``: start 49406, end 49407, pad 0)."""
        return open_clip.tokenize(text, context_length=self.model.positional_embedding.shape[0])

    def forward(self, text: str | Sequence[str]) -> torch.Tensor:
        ids = self.tokenize(text).to(self.model.token_embedding.weight.device)
        return self.encode_with_transformer(ids)

    def encode_with_transformer(self, text: torch.Tensor) -> torch.Tensor:
        """Ids ``(B, L)`` → ``ln_final`` of the chosen block's output ``(B, L, width)``."""
        h = self.model.token_embedding(text) + self.model.positional_embedding  # (B, L, width)
        h = self.text_transformer_forward(h, attn_mask=self.model.attn_mask)
        return self.model.ln_final(h)

    def text_transformer_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The first ``N − layer_idx`` residual blocks on batch-first ``x`` ``(B, L, width)`` → ``(B, L, width)``.

        open_clip ≥ 2.24 runs its blocks batch-first, older releases sequence-first; both are handled.
        """
        tower = self.model.transformer
        blocks = list(tower.resblocks)[: len(tower.resblocks) - self.layer_idx]
        seq_first = not getattr(tower, "batch_first", False)
        h = x.transpose(0, 1) if seq_first else x
        recompute = getattr(tower, "grad_checkpointing", False) and torch.is_grad_enabled()
        for block in blocks:
            step = functools.partial(block, attn_mask=attn_mask)
            h = checkpoint(step, h, use_reentrant=False) if recompute else step(h)
        return h.transpose(0, 1) if seq_first else h


class FrozenOpenCLIPImageEmbedder(OpenCLIPConditioner, CLIPImageInput):
    """Image ``(B, 3, H, W)`` in ``[-1, 1]`` → pooled, projected OpenCLIP image embedding ``(B, embed_dim)``.

    ``z = visual(clip_input(x))`` (bicubic resize to 224 with Gaussian antialiasing, ``[-1, 1] → [0, 1]``, CLIP
    mean/std); in ``forward``, with ``ucg_rate > 0`` and not ``no_dropout``, each ``z_b`` is zeroed with probability
    ``ucg_rate``. On CUDA the forward runs under autocast (default dtype float16), as SD 2.x does. The text
    transformer is deleted; the token/positional embeddings, ``ln_final``, ``text_projection`` and ``logit_scale``
    stay, so the state dict matches unCLIP checkpoints. ``device`` and ``max_length`` are stored, unused.
    """

    def __init__(
        self,
        arch: str = "ViT-H-14",
        version: str | None = "laion2b_s32b_b79k",
        device: str = "cuda",
        max_length: int = 77,
        freeze: bool = True,
        layer: str = "pooled",
        antialias: bool = True,
        ucg_rate: float = 0.0,
    ) -> None:
        if layer != "pooled":
            raise ValueError(f"FrozenOpenCLIPImageEmbedder: layer={layer!r} is not supported; use 'pooled'")
        super().__init__(arch, version, device, max_length, layer, drop="transformer", freeze=freeze)
        self.keep_image_settings(antialias, ucg_rate)

    def forward(self, image: torch.Tensor, no_dropout: bool = False) -> torch.Tensor:
        amp = torch.autocast("cuda") if image.is_cuda else contextlib.nullcontext()
        with amp:
            return self.guidance_dropout(self.encode_with_vision_transformer(image), no_dropout)

    def encode_with_vision_transformer(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[-1, 1]`` → ``visual(preprocess(img))`` ``(B, embed_dim)``."""
        return self.model.visual(self.preprocess(img))
