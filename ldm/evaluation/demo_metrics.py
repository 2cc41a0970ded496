"""Figures the demo reports: stage-1 reconstruction quality and stage-2 prompt adherence on the shapes data.

- PSNR of ``x̂`` against ``x`` (both in [-1, 1]) on the [0, 1] scale: ``10 · log10(1 / mean((x − x̂)² / 4))``;
- KL of the posterior to N(0, I) per image (summed over latent dimensions) and the std of the latents;
- prompt adherence: the independent checker (:mod:`ldm.data.shapes_checker`) reads each generated image and the
  fraction whose attribute equals the prompt's is compared with chance (one over the number of values);
- distribution distance: the Fréchet distance in the shapes feature space (:mod:`ldm.evaluation.shapes_features`,
  NOT Inception FID) between generated images (or stage-1 reconstructions) and held-out test shapes, beside the
  same distance for as many real validation shapes (the floor that finite sets give).
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
from ldm.evaluation.reconstruction import evaluate_autoencoder
from ldm.evaluation.shapes_features import ShapesFeatureExtractor, shapes_frechet_distance_from_features

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


def stage1_quality(autoencoder: torch.nn.Module, images: torch.Tensor, extractor: ShapesFeatureExtractor | None = None,
                   batch_size: int = 64) -> dict[str, float]:
    """PSNR (dB, 8-bit), SSIM and the shapes-feature Fréchet distance of the reconstructions of ``images``
    ``(N, 3, H, W)`` in [-1, 1] against the images themselves (:func:`ldm.evaluation.reconstruction.
    evaluate_autoencoder`; posterior modes decoded)."""
    extractor = extractor if extractor is not None else ShapesFeatureExtractor()
    report = evaluate_autoencoder(autoencoder, images.split(batch_size), feature_extractor=extractor,
                                  total=-(-len(images) // batch_size))
    return {"psnr_8bit_db": report.psnr, "ssim": report.ssim, "shapes_fd": report.rfid}


def sample_paths(folder: str | Path) -> list[Path]:
    """The PNG samples of a ``scripts/txt2img.py`` output folder (its ``samples/``, without the grids)."""
    folder = Path(folder)
    source = folder / "samples" if (folder / "samples").is_dir() else folder
    paths = sorted(source.glob("*.png"))
    if len(paths) < 2:
        raise ValueError(f"{source} holds {len(paths)} PNG samples; the Fréchet distance needs at least 2")
    return paths


def samples_shapes_distance(folder: str | Path, heldout: int = 512, size: int = 32,
                            extractor: ShapesFeatureExtractor | None = None) -> dict[str, float]:
    """The shapes-feature Fréchet distance from the samples in ``folder`` to ``heldout`` test shapes.

    Returns ``{"shapes_fd": that distance, "real_floor": the distance of as many real validation shapes to the
    same test shapes, "samples": their number}``: with tens of samples the estimate is biased upwards, and the
    floor shows how far from 0 a perfect generator would land with that many images.
    """
    extractor = extractor if extractor is not None else ShapesFeatureExtractor()
    generated = read_images(sample_paths(folder))
    reference = extractor.features(heldout_images(heldout, size=size, split="test"))
    real = extractor.features(heldout_images(len(generated), size=size, split="validation"))
    return {
        "shapes_fd": shapes_frechet_distance_from_features(extractor.features(generated), reference),
        "real_floor": shapes_frechet_distance_from_features(real, reference),
        "samples": float(len(generated)),
    }
