"""Sampling a retrieval-augmented diffusion model (``scripts/knn2img.py``): checking that model and CLIP text
encoder fit together, and the loop over prompt batches that conditions on text (and neighbours), samples, decodes
and saves."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm, trange

from ldm.image_io import to_unit_range
from ldm.inference import decode_latents
from ldm.models.diffusion.named_samplers import NamedSampler
from ldm.modules.attention import BasicTransformerBlock
from ldm.retrieval.conditioning import retrieval_conditioning
from ldm.retrieval.searcher import Searcher
from ldm.sampling_cli import SampleWriter, SamplingStart


def check_crossattn_model(model: Any, config: str) -> None:
    """``ValueError`` naming the fix unless ``model`` takes cross-attention conditioning (a ``crossattn`` RDM)."""
    key = getattr(getattr(model, "model", None), "conditioning_key", None)
    if key != "crossattn":
        raise ValueError(f"--config {config} builds a model with conditioning_key {key!r}; knn2img conditions by "
                         "cross-attention on CLIP embeddings: use configs/retrieval-augmented-diffusion/768x768.yaml "
                         "with its checkpoint")


def context_width(model: Any) -> int | None:
    """The token width ``D`` the model's cross-attention layers take as context (None without such layers)."""
    for module in model.modules():
        if isinstance(module, BasicTransformerBlock):
            return module.attn2.to_k.in_features
    return None


def load_text_encoder(clip_type: str, n_repeat: int, model: Any, device: torch.device) -> torch.nn.Module:
    """``FrozenCLIPTextEmbedder(clip_type, n_repeat=n_repeat)`` on ``device``; ``ValueError`` naming the fix when
    its embedding width is not the width the model's cross-attention expects."""
    from ldm.modules.encoders.modules import FrozenCLIPTextEmbedder

    if n_repeat < 1:
        raise ValueError(f"--n_repeat {n_repeat}: the text embedding needs at least one token; pass --n_repeat 1")
    encoder = FrozenCLIPTextEmbedder(clip_type, n_repeat=n_repeat).to(device)
    with torch.no_grad():
        width = encoder.encode([""]).shape[-1]
    expected = context_width(model)
    if expected is not None and width != expected:
        raise ValueError(f"--clip_type {clip_type} embeds text in {width} dimensions but the model's cross-attention "
                         f"takes {expected}; use the CLIP model the RDM was trained with (ViT-L/14: 768)")
    return encoder


def sample_with_retrieval(
    opt: argparse.Namespace,
    model: Any,
    sampler: NamedSampler,
    batches: list[list[str]],
    start: SamplingStart,
    encoder: torch.nn.Module,
    searcher: Searcher | None,
) -> Path:
    """``--n_iter`` passes over the prompt batches, each pass saving its samples and its own grid
    (``grid-0000.png``, ``grid-0001.png``, ...): per batch, ``(c, uc)`` of
    :func:`ldm.retrieval.conditioning.retrieval_conditioning` (``--knn`` neighbours when ``searcher`` is given),
    latents drawn from ``start`` with guidance ``--scale``, decoded in float32 and mapped to [0, 1]. Runs inside
    the caller's sampling scope; returns ``--outdir``."""
    outdir = Path(opt.outdir)
    for _ in trange(opt.n_iter, desc="Sampling"):
        writer = SampleWriter(opt)
        for prompts in tqdm(batches, desc="data"):
            c, uc = retrieval_conditioning(encoder, prompts, searcher, opt.knn, opt.scale)
            latents = start.draw(opt, sampler, c, uc, len(prompts))
            writer.add(to_unit_range(decode_latents(model, latents)))
        outdir = writer.finish()
    return outdir
