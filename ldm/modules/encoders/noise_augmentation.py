"""Noise augmentation of CLIP image embeddings for unCLIP (``CLIPEmbeddingNoiseAugmentation``).

The embedding e is standardised with the CLIP statistics, diffused to level s with the augmentor's own schedule
(the Karlo ``squaredcos_cap_v2`` one in the shipped configs) and mapped back:
z = σ_d · (√ᾱ_s (e − μ_d)/σ_d + √(1 − ᾱ_s) ε) + μ_d; the UNet also receives the sinusoidal embedding of s.
Configs name the class ``ldm.modules.encoders.modules.CLIPEmbeddingNoiseAugmentation``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ldm.checkpoint import load_torch_object
from ldm.modules.diffusionmodules.upscaling import ImageConcatWithNoiseAugmentation, as_noise_levels
from ldm.modules.diffusionmodules.util import timestep_embedding


class NoiseLevelEmbedding(nn.Module):
    """s ``(B,)`` → its sinusoidal embedding ``(B, dim)`` (:func:`timestep_embedding`); no parameters."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim)


def load_clip_stats(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(mean, std)`` pair of ``(D,)`` tensors that ``torch.save`` wrote to ``path`` (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"noise_aug_config.params.clip_stats_path = {str(path)!r}: no such file. Put the CLIP embedding "
            "statistics (a (mean, std) pair saved with torch.save) there, or set the key to null for mean 0, std 1."
        )
    stats = load_torch_object(path)
    if not (isinstance(stats, (tuple, list)) and len(stats) == 2 and all(torch.is_tensor(s) for s in stats)):
        raise ValueError(f"{path}: expected a (mean, std) pair of tensors, got {type(stats).__name__}.")
    mean, std = stats
    return mean.float(), std.float()


def standard_stats(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """μ_d = 0, σ_d = 1 as ``(dim,)`` CPU tensors."""
    return torch.zeros(dim, device="cpu"), torch.ones(dim, device="cpu")


class CLIPEmbeddingNoiseAugmentation(ImageConcatWithNoiseAugmentation):
    """Noise-augment embeddings ``(B, D)``: ``forward(x, noise_level=None) -> (z (B, D), emb(s) (B, timestep_dim))``.

    ``clip_stats_path`` names the (mean, std) statistics; without it μ_d = 0 and σ_d = 1 with D = ``timestep_dim``.
    ``data_mean`` / ``data_std`` ``(1, D)`` are buffers that checkpoints do not hold. Other arguments go to
    :class:`~ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation`.
    """

    def __init__(self, *args: Any, clip_stats_path: str | None = None, timestep_dim: int = 256, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.time_embed = NoiseLevelEmbedding(timestep_dim)
        # Real values (on the CPU) even when the model is built on the meta device: checkpoints do not hold them.
        stats = load_clip_stats(clip_stats_path) if clip_stats_path else standard_stats(timestep_dim)
        for name, values in zip(("data_mean", "data_std"), stats, strict=True):
            self.register_buffer(name, values[None, :], persistent=False)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """(x − μ_d) / σ_d: zero mean, unit variance."""
        return (x - self.data_mean) / self.data_std

    def unscale(self, x: torch.Tensor) -> torch.Tensor:
        """σ_d x + μ_d, the inverse of :meth:`scale`."""
        return x * self.data_std + self.data_mean

    def forward(self, x: torch.Tensor, noise_level: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """z = unscale(q_sample(scale(x), s)) and emb(s); s drawn (before ε) when not given."""
        if noise_level is None:
            levels = torch.randint(0, self.max_noise_level, (x.shape[0],), device=x.device).long()
        else:
            levels = as_noise_levels(noise_level, x.shape[0], x.device)
        noised = self.unscale(self.q_sample(self.scale(x), levels))
        return noised, self.time_embed(levels)
