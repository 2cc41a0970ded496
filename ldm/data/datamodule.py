"""``DataModuleFromConfig``: a LightningDataModule whose splits are ``{target, params}`` dataset configs.

Configs name it ``main.DataModuleFromConfig``; ``main.py`` re-exports it from here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ldm.data.base import Txt2ImgIterableBaseDataset
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)


class WrappedDataset(Dataset):
    """Any object with ``__len__`` and ``__getitem__`` as a torch ``Dataset``."""

    def __init__(self, dataset: Any):
        self.data = dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> Any:
        return self.data[idx]


# Words in numpy's MT19937 key (``np.random.get_state()[1]``).
_MT_KEY_WORDS = 624


def _take_shard(dataset: Txt2ImgIterableBaseDataset, worker: int, workers: int) -> None:
    """Let ``worker`` of ``workers`` stream its own contiguous ``num_records // workers`` of the valid ids."""
    size = dataset.num_records // workers
    dataset.sample_ids = dataset.valid_ids[worker * size : (worker + 1) * size]


def worker_init_fn(_: int) -> None:
    """Give each DataLoader worker its own numpy seed and, for iterable datasets, a disjoint slice of ids.

    Worker ``w`` of ``n`` streams ``valid_ids[w * k:(w + 1) * k]`` with ``k = num_records // n``. The seed is
    ``key[0] + w`` of numpy's MT19937 key, or for iterable datasets ``key[j] + w`` with ``j`` drawn uniformly
    first (the key read after that draw), modulo ``2**32``.
    """
    info = torch.utils.data.get_worker_info()
    word = 0
    if isinstance(info.dataset, Txt2ImgIterableBaseDataset):
        _take_shard(info.dataset, info.id, info.num_workers)
        word = int(np.random.choice(_MT_KEY_WORDS, 1)[0])
    key = np.random.get_state()[1]
    np.random.seed((int(key[word]) + info.id) % 2**32)


class DataModuleFromConfig(pl.LightningDataModule):
    """Builds the datasets of ``train`` / ``validation`` / ``test`` / ``predict`` from their configs.

    Only the configured splits get a dataloader method, so Lightning skips validation when there is no
    ``validation`` config. ``num_workers`` defaults to ``2 * batch_size``.
    """

    def __init__(
        self,
        batch_size: int,
        train: Mapping | None = None,
        validation: Mapping | None = None,
        test: Mapping | None = None,
        predict: Mapping | None = None,
        wrap: bool = False,
        num_workers: int | None = None,
        shuffle_test_loader: bool = False,
        use_worker_init_fn: bool = False,
        shuffle_val_dataloader: bool = False,
    ):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = 2 * batch_size if num_workers is None else num_workers
        self.use_worker_init_fn, self.wrap = use_worker_init_fn, wrap
        self.datasets: dict[str, Any] = {}
        # split -> (its config, the LightningDataModule hook that serves it, the loader)
        splits = {
            "train": (train, "train_dataloader", self._train_dataloader),
            "validation": (validation, "val_dataloader", partial(self._val_dataloader, shuffle=shuffle_val_dataloader)),
            "test": (test, "test_dataloader", partial(self._test_dataloader, shuffle=shuffle_test_loader)),
            "predict": (predict, "predict_dataloader", self._predict_dataloader),
        }
        self.dataset_configs: dict[str, Any] = {name: cfg for name, (cfg, _, _) in splits.items() if cfg is not None}
        for name in self.dataset_configs:
            _, hook, loader = splits[name]
            setattr(self, hook, loader)

    def _build(self, split: str) -> None:
        if split in self.datasets:
            return
        dataset = instantiate_from_config(self.dataset_configs[split], name=f"data.params.{split}")
        self.datasets[split] = WrappedDataset(dataset) if self.wrap else dataset
        size = len(dataset) if hasattr(dataset, "__len__") else "?"
        logger.info("data split %s: %s with %s examples", split, type(dataset).__name__, size)

    def prepare_data(self) -> None:
        """Instantiate every dataset once on the preparing rank, so downloads/extraction happen there."""
        for split in self.dataset_configs:
            self._build(split)

    def setup(self, stage: str | None = None) -> None:
        for split in self.dataset_configs:
            self._build(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """The split's DataLoader; iterable datasets are never shuffled and always get ``worker_init_fn``."""
        dataset = self.datasets[split]
        iterable = isinstance(dataset, Txt2ImgIterableBaseDataset)
        init = worker_init_fn if iterable or self.use_worker_init_fn else None
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          shuffle=shuffle and not iterable, worker_init_fn=init)

    def _train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def _val_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("validation", shuffle)

    def _test_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("test", shuffle)

    def _predict_dataloader(self, shuffle: bool = False) -> DataLoader:
        """Never shuffled (``shuffle`` is ignored)."""
        return self._loader("predict", shuffle=False)
