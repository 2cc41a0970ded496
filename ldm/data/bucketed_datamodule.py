"""``BucketedDataModuleFromConfig``: ``DataModuleFromConfig`` whose loaders batch by aspect-ratio bucket for every
split dataset that has ``bucket_ids`` (:class:`ldm.data.image_folder.ImageFolderDataset` with ``aspect_buckets``).

Such a split gets ``DataLoader(dataset, batch_sampler=AspectBucketBatchSampler(...))``: batches of one shape,
reshuffled every epoch from ``(seed, epoch)`` when the split is shuffled. Under DDP, Lightning hands the batch
sampler its ``DistributedSampler`` (rank, world size, seed) and each rank takes its share of the batches. Other
splits get the plain loaders.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch.utils.data import DataLoader, SequentialSampler

from ldm.data.aspect_buckets import AspectBucketBatchSampler
from ldm.data.datamodule import DataModuleFromConfig


class BucketedDataModuleFromConfig(DataModuleFromConfig):
    """``DataModuleFromConfig`` plus ``seed`` (default: the run's ``PL_GLOBAL_SEED``, else 0) for the bucket order,
    and ``drop_last`` (drop each bucket's last, smaller batch)."""

    def __init__(self, batch_size: int, train: Mapping | None = None, validation: Mapping | None = None,
                 test: Mapping | None = None, predict: Mapping | None = None, wrap: bool = False,
                 num_workers: int | None = None, shuffle_test_loader: bool = False, use_worker_init_fn: bool = False,
                 shuffle_val_dataloader: bool = False, seed: int | None = None, drop_last: bool = False):
        super().__init__(batch_size, train=train, validation=validation, test=test, predict=predict, wrap=wrap,
                         num_workers=num_workers, shuffle_test_loader=shuffle_test_loader,
                         use_worker_init_fn=use_worker_init_fn, shuffle_val_dataloader=shuffle_val_dataloader)
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else int(seed)
        self.drop_last = drop_last

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        bucket_ids = getattr(getattr(dataset, "data", dataset), "bucket_ids", None)
        if bucket_ids is None:
            return super()._loader(split, shuffle)
        sampler: Any = AspectBucketBatchSampler(SequentialSampler(dataset), self.batch_size, self.drop_last,
                                                bucket_ids=bucket_ids, shuffle=shuffle, seed=self.seed)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers)
