"""Figures the demo reports: stage-1 reconstruction quality and stage-2 prompt adherence on the shapes data.

- PSNR of ``x̂`` against ``x`` (both in [-1, 1]) on the [0, 1] scale: ``10 · log10(1 / mean((x − x̂)² / 4))``;
- KL of the posterior to N(0, I) per image (summed over latent dimensions) and the std of the latents;
- prompt adherence: the independent checker (:mod:`ldm.data.shapes_checker`) reads each generated image and the
  fraction whose attribute equals the prompt's is compared with chance (one over the number of values).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldm.data.shapes import COLORS, KINDS, POSITIONS, SIZES, ShapesDataset, ShapeSpec
from ldm.data.shapes_checker import attribute_accuracy

#: Accuracy of guessing each attribute uniformly at random ("all": every attribute at once).
CHANCE = {
    "kind": 1 / len(KINDS),
    "color": 1 / len(COLORS),
    "size": 1 / len(SIZES),
    "position": 1 / len(POSITIONS),
    "all": 1 / (len(KINDS) * len(COLORS) * len(SIZES) * len(POSITIONS)),
}


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``x_hat`` against ``x``, both ``(B, C, H, W)`` in [-1, 1] (``x_hat`` is clamped)."""
    if x.shape != x_hat.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    mse = ((x - x_hat.clamp(-1.0, 1.0)) / 2.0).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def heldout_images(count: int, size: int = 32, split: str = "test", seed: int = 0) -> torch.Tensor:
    """The first ``count`` shapes of ``split`` as ``(count, 3, size, size)`` in [-1, 1] (never seen in training)."""
    dataset = ShapesDataset(size=size, length=count, split=split, seed=seed)
    images = np.stack([dataset[i]["image"] for i in range(count)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def reconstruction_stats(autoencoder: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Mean PSNR (dB) of the decoded posterior modes, mean per-image KL (nats) and the std of the latent samples.

    ``autoencoder`` has ``encode(x) -> DiagonalGaussianDistribution`` and ``decode(z)`` (an ``AutoencoderKL``);
    ``images``: ``(N, 3, H, W)`` in [-1, 1].
    """
    device = next(autoencoder.parameters()).device
    psnrs, kls, latents = [], [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        posterior = autoencoder.encode(x)
        psnrs.append(psnr(x, autoencoder.decode(posterior.mode())).cpu())
        kls.append(posterior.kl().cpu())
        latents.append(posterior.sample().cpu())
    z = torch.cat(latents)
    return {
        "psnr_db": float(torch.cat(psnrs).mean()),
        "psnr_db_min": float(torch.cat(psnrs).min()),
        "kl": float(torch.cat(kls).mean()),
        "latent_std": float(z.std()),
        "latent_mean": float(z.mean()),
    }


def prompt_specs(per_combination: int = 1) -> list[ShapeSpec]:
    """Every kind × colour, ``per_combination`` times, with sizes and positions cycling deterministically."""
    sizes, positions = itertools.cycle(SIZES), itertools.cycle(POSITIONS)
    specs = []
    for _ in range(per_combination):
        for kind, color in itertools.product(KINDS, COLORS):
            specs.append(ShapeSpec(kind=kind, color=color, size=next(sizes), position=next(positions)))
    return specs


def read_images(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """PNG files as ``(H, W, 3)`` uint8 arrays."""
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def prompt_adherence(images: Sequence[np.ndarray], specs: Sequence[ShapeSpec]) -> dict[str, dict[str, float]]:
    """``{"accuracy": per-attribute fraction of images matching their prompt, "chance": the same by guessing}``."""
    return {"accuracy": attribute_accuracy(list(images), list(specs)), "chance": dict(CHANCE)}
