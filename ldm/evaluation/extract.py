"""Features of many images: image sources as datasets, and the extraction loops (one process, or a Lightning
``Trainer`` predict loop over N devices with ``strategy="ddp"`` that gathers every rank's features).

Every source yields ``(index, image)`` with ``image`` uint8 ``(3, H, W)``; the loops return
``{"pool": (N, D), "logits": (N, K)}`` float32 arrays in the sources' order, whatever the number of devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ldm.cli.validation import require_dir
from ldm.evaluation.reference_stats import npz_images
from ldm.image_io import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageFolderSource(Dataset):
    """The image files of a folder (sorted by name; ``.png .jpg .jpeg .webp .bmp``, searched recursively), all of
    one size, as uint8 ``(3, H, W)``."""

    def __init__(self, folder: str | Path, flag: str = "--samples", limit: int | None = None) -> None:
        self.folder = require_dir(folder, flag, "image folder")
        self.flag = flag
        self.paths = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if limit is not None:
            self.paths = self.paths[:limit]
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.folder} (from {flag})")
        self.size = self._read(0).shape[1:]

    def _read(self, index: int) -> torch.Tensor:
        image = np.asarray(read_image(self.paths[index], self.flag))
        return torch.from_numpy(image.copy()).permute(2, 0, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        image = self._read(index)
        if image.shape[1:] != self.size:
            raise ValueError(f"{self.paths[index]} is {tuple(image.shape[1:])} pixels but {self.paths[0]} is "
                             f"{tuple(self.size)}; resize the images of {self.folder} to one size")
        return index, image


class ArrayImageSource(Dataset):
    """Images ``(N, H, W, 3)`` uint8 (an array, a memory map of an ``.npz`` batch) as uint8 ``(3, H, W)``."""

    def __init__(self, images: np.ndarray, limit: int | None = None) -> None:
        self.images = images if limit is None else images[:limit]

    @classmethod
    def from_npz(cls, path: str | Path, limit: int | None = None) -> ArrayImageSource:
        """The ``arr_0`` image batch of an ADM-layout ``.npz``, memory-mapped where possible."""
        return cls(npz_images(path), limit)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1)


class DatasetImageSource(Dataset):
    """A training data set's ``key`` entries (``(H, W, 3)`` float in [-1, 1], the ldm data sets' layout) as uint8
    ``(3, H, W)``: round(127.5 (x + 1)) clamped to [0, 255]."""

    def __init__(self, dataset: Dataset, key: str = "image", limit: int | None = None) -> None:
        self.dataset, self.key = dataset, key
        self.length = len(dataset) if limit is None else min(limit, len(dataset))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        image = torch.as_tensor(np.asarray(self.dataset[index][self.key]), dtype=torch.float32)
        return index, ((image + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(2, 0, 1)


def image_source(path: str | Path, flag: str, limit: int | None = None) -> Dataset:
    """A folder of images, or the ``arr_0`` batch of an ``.npz``."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        return ArrayImageSource.from_npz(path, limit)
    return ImageFolderSource(path, flag, limit)


def collate_indexed(items: Sequence[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, image)`` items → ``(indices (B,), images (B, 3, H, W))``."""
    indices, images = zip(*items)
    return torch.tensor(indices, dtype=torch.long), torch.stack(images)


def _concatenate(chunks: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {key: torch.cat([chunk[key] for chunk in chunks]).float().numpy() for key in chunks[0]}


@torch.no_grad()
def extract_features(
    extractor: nn.Module, source: Dataset, batch_size: int = 50, device: torch.device | str = "cpu",
    num_workers: int = 0, desc: str = "features",
) -> dict[str, np.ndarray]:
    """``extractor`` over every image of ``source`` in one process, with a progress bar."""
    extractor = extractor.to(device).eval()
    loader = DataLoader(source, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_indexed)
    chunks = []
    for _, images in tqdm(loader, desc=desc, unit="batch"):
        chunks.append({key: value.detach().cpu() for key, value in extractor(images.to(device)).items()})
    return _concatenate(chunks)


class FeatureExtraction(pl.LightningModule):
    """The extractor as a Lightning module whose ``predict_step`` returns every rank's features of the step,
    gathered (``all_gather``) with their source indices, so each rank ends with all of them."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor.eval()

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        indices, images = batch
        features = {key: value.float() for key, value in self.extractor(images).items()}
        gathered = self.all_gather({"index": indices, **features})
        if self.trainer.world_size > 1:  # (world, B, ...) → (world · B, ...)
            gathered = {key: value.flatten(0, 1) for key, value in gathered.items()}
        return {key: value.cpu() for key, value in gathered.items()}


class ShardedImages(pl.LightningDataModule):
    """A source split over the ranks by a padded ``DistributedSampler`` (every rank sees as many batches of the
    same sizes, so the per-step ``all_gather`` matches up; the padding repeats indices, dropped after gathering)."""

    def __init__(self, source: Dataset, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        self.source, self.batch_size, self.num_workers = source, batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        sampler = DistributedSampler(self.source, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                                     shuffle=False, drop_last=False)
        return DataLoader(self.source, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_indexed)


def extract_features_distributed(
    extractor: nn.Module, source: Dataset, batch_size: int = 50, accelerator: str = "auto", devices: int | str = 1,
    strategy: str = "auto", num_workers: int = 0,
) -> dict[str, np.ndarray]:
    """``extractor`` over ``source`` through ``Trainer.predict`` on ``devices`` (``strategy="ddp"`` for several
    GPUs); every rank returns all features, in the source's order (padding duplicates removed)."""
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, use_distributed_sampler=False,
                         logger=False, enable_checkpointing=False, enable_model_summary=False, inference_mode=True)
    steps = trainer.predict(FeatureExtraction(extractor), datamodule=ShardedImages(source, batch_size, num_workers))
    merged = {key: torch.cat([step[key] for step in steps]) for key in steps[0]}
    order = merged.pop("index")
    unique, first = np.unique(order.numpy(), return_index=True)
    if len(unique) != len(source):
        raise RuntimeError(f"gathered features of {len(unique)} images, expected {len(source)}")
    return {key: value[torch.from_numpy(first)].float().numpy() for key, value in merged.items()}
