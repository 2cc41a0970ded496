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


def worker_init_fn(_: int) -> None:
    """Give each DataLoader worker its own numpy seed and, for iterable datasets, a disjoint slice of ids.

    Worker ``w`` of ``n`` streams ``valid_ids[w * k:(w + 1) * k]`` with ``k = num_records // n``. The seed is
    ``key[0] + w`` of numpy's MT19937 state, or for iterable datasets ``key[j] + w`` with ``j`` drawn from that
    state (the original's choice), modulo ``2**32``.
    """
    info = torch.utils.data.get_worker_info()
    dataset, worker_id = info.dataset, info.id
    if isinstance(dataset, Txt2ImgIterableBaseDataset):
        split_size = dataset.num_records // info.num_workers
        dataset.sample_ids = dataset.valid_ids[worker_id * split_size : (worker_id + 1) * split_size]
        index = int(np.random.choice(len(np.random.get_state()[1]), 1)[0])
    else:
        index = 0
    base_seed = int(np.random.get_state()[1][index])
    np.random.seed((base_seed + worker_id) % 2**32)


class DataModuleFromConfig(pl.LightningDataModule):
    """Builds the datasets of ``train`` / ``validation`` / ``test`` / ``predict`` from their configs.

    Only the configured splits get a dataloader method, so Lightning skips validation when there is no
    ``validation`` config. ``num_workers`` defaults to ``2 * batch_size`` as in the original.
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
        self.num_workers = num_workers if num_workers is not None else batch_size * 2
        self.use_worker_init_fn = use_worker_init_fn
        self.wrap = wrap
        self.dataset_configs: dict[str, Any] = {}
        self.datasets: dict[str, Any] = {}
        if train is not None:
            self.dataset_configs["train"] = train
            self.train_dataloader = self._train_dataloader
        if validation is not None:
            self.dataset_configs["validation"] = validation
            self.val_dataloader = partial(self._val_dataloader, shuffle=shuffle_val_dataloader)
        if test is not None:
            self.dataset_configs["test"] = test
            self.test_dataloader = partial(self._test_dataloader, shuffle=shuffle_test_loader)
        if predict is not None:
            self.dataset_configs["predict"] = predict
            self.predict_dataloader = self._predict_dataloader

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

    def _init_fn(self, split: str) -> Any:
        iterable = isinstance(self.datasets[split], Txt2ImgIterableBaseDataset)
        return worker_init_fn if iterable or self.use_worker_init_fn else None

    def _train_dataloader(self) -> DataLoader:
        iterable = isinstance(self.datasets["train"], Txt2ImgIterableBaseDataset)
        return DataLoader(
            self.datasets["train"],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            shuffle=not iterable,
            worker_init_fn=self._init_fn("train"),
        )

    def _eval_dataloader(self, split: str, shuffle: bool = False) -> DataLoader:
        iterable = isinstance(self.datasets[split], Txt2ImgIterableBaseDataset)
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            shuffle=shuffle and not iterable,
            worker_init_fn=self._init_fn(split),
        )

    def _val_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._eval_dataloader("validation", shuffle=shuffle)

    def _test_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._eval_dataloader("test", shuffle=shuffle)

    def _predict_dataloader(self, shuffle: bool = False) -> DataLoader:
        """Never shuffled (the original ignores ``shuffle`` here)."""
        return self._eval_dataloader("predict", shuffle=False)
