"""A feature space for the shapes data: a small CNN classifier of the shapes' attributes, read at its penultimate layer.

The Fréchet distance in this space, ``d² = ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½)`` over the 64-d features,
is an FID-like figure for generators of the bundled shapes data (:mod:`ldm.data.shapes`). It is **not** Inception
FID: the network has seen nothing but 32x32 shapes, so its numbers are comparable only with other numbers from the
same feature space (same :class:`ShapesFeatureSettings`), never with published FIDs.

The network (:class:`ShapesFeatureNet`) is trained on the ``train`` split to name each image's kind, colour, size
and position (one linear head per attribute on a shared trunk), in seconds on a CPU, from a fixed seed. It is trained
once and cached as a safetensors file under ``$XDG_CACHE_HOME/ldm/shapes_features/`` (or a folder the caller gives),
named by a hash of its settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ldm.checkpoint import save_safetensors
from ldm.data.shapes import COLORS, KINDS, POSITIONS, SIZES, ShapesDataset
from ldm.evaluation.features import POOL, FeatureExtractor
from ldm.evaluation.frechet import feature_statistics, frechet_distance

logger = logging.getLogger(__name__)

#: The classifier's heads: attribute → the names of its values, in the order of the head's logits.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "kind": tuple(KINDS),
    "color": tuple(COLORS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
}
#: Side in pixels the network reads; other sizes are resized (area averaging down, bilinear up) first.
INPUT_SIZE = 32

ImagesLike = torch.Tensor | np.ndarray | Sequence[np.ndarray]


@dataclass(frozen=True)
class ShapesFeatureSettings:
    """Everything that determines the trained network (its cache file is named by a hash of these)."""

    feature_dim: int = 64
    train_images: int = 6000
    epochs: int = 4
    batch_size: int = 128
    learning_rate: float = 3e-3
    seed: int = 0
    data_seed: int = 0

    def digest(self) -> str:
        """A short hash of the settings, the cache file's name."""
        text = json.dumps({"version": 1, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class ShapesFeatureNet(nn.Module):
    """Three conv blocks ``(B, 3, 32, 32) -> (B, 64, 4, 4)``, a hidden layer ``-> (B, feature_dim)`` (the features),
    and one linear head per attribute of :data:`ATTRIBUTES` on it."""

    def __init__(self, feature_dim: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 16, 16)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 8, 8)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 4, 4)
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, feature_dim), nn.ReLU(),  # (B, feature_dim)
        )
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(values)) for name, values in ATTRIBUTES.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, feature_dim)`` penultimate-layer activations."""
        return self.trunk(resize_to_input(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` in [-1, 1] -> ``{attribute: logits (B, number of values)}``."""
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}


def resize_to_input(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, 3, 32, 32)``: area averaging when shrinking, bilinear when enlarging."""
    if x.shape[-2:] == (INPUT_SIZE, INPUT_SIZE):
        return x
    if min(x.shape[-2:]) > INPUT_SIZE:
        return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="area")
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)


def as_image_batch(images: ImagesLike) -> torch.Tensor:
    """Images as ``(N, 3, H, W)`` float32 in [-1, 1].

    Accepts a float tensor ``(N, 3, H, W)`` already in [-1, 1], a uint8 tensor/array ``(N, H, W, 3)`` (or
    ``(N, 3, H, W)`` as a tensor), or a list of ``(H, W, 3)`` uint8 arrays (as :func:`demo_metrics.read_images`
    gives).
    """
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(image) for image in images])
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"numpy images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if images.ndim != 4:
        raise ValueError(f"images must be a batch (N, 3, H, W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        images = images if images.shape[1] == 3 else images.permute(0, 3, 1, 2)
        return images.float() / 127.5 - 1.0
    if images.shape[1] != 3:
        raise ValueError(f"float images must be (N, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    return images.float()


# ----------------------------------------------------------------------------------------------------------------
# training and caching


def _training_data(settings: ShapesFeatureSettings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``settings.train_images`` train-split shapes ``(N, 3, 32, 32)`` and their attribute indices ``{name: (N,)}``."""
    dataset = ShapesDataset(size=INPUT_SIZE, length=settings.train_images, split="train", seed=settings.data_seed)
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.from_numpy(np.stack([item["image"] for item in items])).permute(0, 3, 1, 2).contiguous()
    labels = {name: torch.tensor([values.index(item[name]) for item in items]) for name, values in ATTRIBUTES.items()}
    return images, labels


def train_shapes_feature_net(settings: ShapesFeatureSettings = ShapesFeatureSettings()) -> ShapesFeatureNet:
    """Train the attribute classifier from ``settings.seed``: Adam, the sum of the heads' cross-entropies.

    Deterministic on a given machine: it runs on one CPU thread, weights and shuffling draw from the seeded
    generators, and the global RNG state is restored afterwards. Returns the network in eval mode.
    """
    images, labels = _training_data(settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same sums in the same order whatever the caller's setting
    try:
        return _train(images, labels, settings)
    finally:
        torch.set_num_threads(threads)


def _train(images: torch.Tensor, labels: dict[str, torch.Tensor], settings: ShapesFeatureSettings) -> ShapesFeatureNet:
    """The loop of :func:`train_shapes_feature_net` on ``images (N, 3, 32, 32)`` and ``labels {attribute: (N,)}``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        net = ShapesFeatureNet(settings.feature_dim)
        order = torch.Generator().manual_seed(settings.seed)
        optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
        steps = settings.epochs * -(-len(images) // settings.batch_size)
        progress = tqdm(total=steps, desc="training the shapes feature net", leave=False)
        net.train()
        for _ in range(settings.epochs):
            for batch in torch.randperm(len(images), generator=order).split(settings.batch_size):
                logits = net(images[batch])
                loss = sum(F.cross_entropy(logits[name], labels[name][batch]) for name in ATTRIBUTES)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                progress.update()
                progress.set_postfix(loss=f"{loss.item():.3f}")
        progress.close()
    return net.eval().requires_grad_(False)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ldm/shapes_features`` (``~/.cache/ldm/shapes_features`` when the variable is unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ldm" / "shapes_features"


def load_shapes_feature_net(
    settings: ShapesFeatureSettings = ShapesFeatureSettings(), cache_dir: str | os.PathLike | None = None
) -> ShapesFeatureNet:
    """The trained network for ``settings``: read from ``<cache_dir>/shapes-features-<digest>.safetensors`` if it
    is there, else trained now and written there (atomically). ``cache_dir`` defaults to :func:`default_cache_dir`."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"shapes-features-{settings.digest()}.safetensors"
    net = ShapesFeatureNet(settings.feature_dim)
    if path.is_file():
        net.load_state_dict(safetensors.torch.load_file(str(path)))
        logger.info("shapes feature net read from %s", path)
        return net.eval().requires_grad_(False)
    logger.info("training the shapes feature net (once; cached at %s)", path)
    net = train_shapes_feature_net(settings)
    save_safetensors(path, net.state_dict(), metadata={"settings": json.dumps(asdict(settings), sort_keys=True)})
    return net


# ----------------------------------------------------------------------------------------------------------------
# features and distances


class ShapesFeatureExtractor(FeatureExtractor):
    """The shapes feature space as a :class:`ldm.evaluation.features.FeatureExtractor`: ``forward(images)`` ->
    ``{"pool": (N, feature_dim)}`` (no logits), usable wherever an extractor is (``--features shapes``, the
    ``feature_extractor`` of :class:`ldm.callbacks.sample_metrics.SampleMetrics`, ``"ldm.evaluation.shapes_features:
    ShapesFeatureExtractor"`` as a factory).

    ``images``: uint8 ``(N, 3, H, W)`` as the contract says, or anything :func:`as_image_batch` accepts. The network
    is read from the cache (trained first if absent) unless ``net`` is given.
    """

    name = "shapes-features"

    def __init__(self, cache_dir: str | os.PathLike | None = None, batch_size: int = 256,
                 settings: ShapesFeatureSettings | dict | None = None, net: ShapesFeatureNet | None = None) -> None:
        super().__init__()
        self.settings = ShapesFeatureSettings(**settings) if isinstance(settings, dict) else (
            settings or ShapesFeatureSettings())
        self.batch_size = batch_size
        self.net = net if net is not None else load_shapes_feature_net(self.settings, cache_dir)
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: ImagesLike) -> dict[str, torch.Tensor]:
        device = next(self.net.parameters()).device
        batch = as_image_batch(images)
        parts = [self.net.features(part.to(device)).float() for part in batch.split(self.batch_size)]
        return {POOL: torch.cat(parts) if parts else torch.zeros(0, self.settings.feature_dim, device=device)}

    def features(self, images: ImagesLike) -> torch.Tensor:
        """``(N, feature_dim)`` features on the CPU."""
        return self(images)[POOL].cpu()


def shapes_frechet_distance_from_features(features_a: torch.Tensor | np.ndarray,
                                          features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two ``(N, D)`` feature sets of :class:`ShapesFeatureExtractor`."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def shapes_frechet_distance(images_a: ImagesLike, images_b: ImagesLike,
                            extractor: ShapesFeatureExtractor | None = None) -> float:
    """The shapes-feature Fréchet distance between two image sets (NOT Inception FID; see the module docstring).

    ``images_a`` / ``images_b``: ``(N, 3, H, W)`` float in [-1, 1], or uint8 ``(N, H, W, 3)`` / a list of ``(H, W,
    3)`` arrays; each set needs at least 2 images (the covariance of a few is noisy: use hundreds).
    """
    extractor = extractor or ShapesFeatureExtractor()
    return shapes_frechet_distance_from_features(extractor.features(images_a), extractor.features(images_b))


@torch.no_grad()
def attribute_accuracy(net: ShapesFeatureNet, images: ImagesLike, labels: dict[str, Sequence[str]]) -> dict[str, float]:
    """Fraction of ``images`` whose predicted value of each attribute equals ``labels[attribute]`` (names)."""
    logits = net(as_image_batch(images))
    accuracy = {}
    for name, values in ATTRIBUTES.items():
        target = torch.tensor([values.index(value) for value in labels[name]])
        accuracy[name] = float((logits[name].argmax(dim=1) == target).float().mean())
    return accuracy
