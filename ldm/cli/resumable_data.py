"""A train dataloader whose every random choice is a function of (run seed, epoch, position), so a run resumed in
the middle of an epoch sees exactly the batches the uninterrupted run would have seen.

* the order of epoch ``e`` is a permutation drawn from a generator seeded with ``mix(root, e)`` (or the plain order
  when the loader did not shuffle);
* example ``i`` of epoch ``e`` is loaded with Python's, numpy's and torch's generators seeded with
  ``mix(mix(root, e), i)`` (the caller's generator states are put back afterwards), so random augmentations (flips,
  crops) no longer depend on which worker loads the example, on how far the workers ran ahead, or on what the
  model drew in between;
* the loader's own generator (the workers' base seed) is re-seeded with ``mix(root, e)`` at each epoch.

The loader's ``state_dict()`` (which Lightning stores with the fit loop) is the epoch and the number of batches the
training loop has consumed; ``load_state_dict`` makes the next epoch continue there.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    get_worker_info,
)

logger = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1


def mix(a: int, b: int) -> int:
    """A 64-bit seed from two integers: SplitMix64's output function applied to ``a·φ64 + b`` (mod 2^64), where
    ``φ64 = 0x9E3779B97F4A7C15``. Distinct ``(a, b)`` give well-spread, practically independent seeds."""
    z = (a * 0x9E3779B97F4A7C15 + b + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@dataclass
class EpochPosition:
    """Where the train data stands: ``epoch`` (-1 before the first) and, after a resume, the batches to skip.

    Shared by every loader :func:`resumable_train_data` builds, so ``reload_dataloaders_every_n_epochs`` keeps
    counting epochs. ``batches_done`` is set by :func:`ldm.cli.trainer.make_data_resumable` to the training loop's
    count of processed batches, which is what a checkpoint must record (a batch fetched for a step that then failed
    was not consumed); without it the loader counts the batches it served.
    """

    root: int
    epoch: int = -1
    skip: int = 0
    resuming: bool = False
    batches_done: Callable[[], int] | None = field(default=None, repr=False)

    def begin_epoch(self) -> tuple[int, int]:
        """``(epoch, batches to skip)`` for a new iterator: the resumed epoch once, then the next ones."""
        if self.resuming:
            self.resuming = False
            return self.epoch, self.skip
        self.epoch += 1
        self.skip = 0
        return self.epoch, 0


def seed_generators(seed: int) -> None:
    """Python's ``random``, numpy's global generator and torch's CPU generator seeded from one 64-bit ``seed``."""
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
    torch.default_generator.manual_seed(seed)


class SeededItems(Dataset):
    """``dataset[(index, seed)]`` is ``dataset[index]`` drawn with Python's, numpy's and torch's CPU generators
    seeded from ``seed``. In the main process (``num_workers=0``) the generators' previous states come back
    afterwards, so loading data does not consume the model's random numbers. A plain index passes through."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        if get_worker_info() is not None:  # a worker's generators serve nothing else
            seed_generators(seed)
            return self.dataset[index]
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            seed_generators(seed)
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


class EpochOrder(Sampler):
    """Yields ``(index, example seed)`` for one epoch, the order shuffled or not, after skipping the first
    ``skip`` indices; :meth:`plan` sets the epoch and the skip before each iteration."""

    def __init__(self, size: int, shuffle: bool, root: int):
        self.size, self.shuffle, self.root = size, shuffle, root
        self._epoch, self._skip = 0, 0

    def __len__(self) -> int:
        return self.size

    def plan(self, epoch: int, skip: int) -> None:
        self._epoch, self._skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch_seed = mix(self.root, self._epoch)
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        else:
            order = range(self.size)
        return self._with_seeds(order[self._skip:], epoch_seed)

    @staticmethod
    def _with_seeds(order: Any, epoch_seed: int) -> Iterator[tuple[int, int]]:
        for index in order:
            yield index, mix(epoch_seed, index)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over :class:`SeededItems` in :class:`EpochOrder`, with Lightning's stateful-loader
    interface (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, *args: Any, position: EpochPosition, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.position = position
        self._served = 0

    def __iter__(self) -> Iterator[Any]:
        epoch, skip = self.position.begin_epoch()
        if not isinstance(self.sampler, EpochOrder):  # replaced (a distributed sampler): a plain DataLoader then
            return super().__iter__()
        self.sampler.plan(epoch, skip * self.batch_size)
        self.generator.manual_seed(mix(self.position.root, epoch))
        self._served = skip
        return self._count(super().__iter__())

    def _count(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        done = self.position.batches_done() if self.position.batches_done else self._served
        return {"epoch": self.position.epoch, "batches": int(done), "length": len(self)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        if batches >= int(state_dict.get("length", len(self))):
            epoch, batches = epoch + 1, 0
        self.position.epoch, self.position.skip, self.position.resuming = epoch, batches, True


def _convertible(loader: Any) -> str | None:
    """Why ``loader`` cannot be rebuilt as a :class:`ResumableLoader` (None if it can)."""
    if type(loader) is not DataLoader:
        return f"it is a {type(loader).__name__}, not a torch DataLoader"
    if isinstance(loader.dataset, IterableDataset):
        return "its dataset is iterable"
    if type(loader.batch_sampler) is not BatchSampler or loader.batch_size is None:
        return "it has a custom batch sampler"
    sampler = loader.sampler
    if type(sampler) is RandomSampler and (sampler.replacement or sampler.num_samples != len(loader.dataset)):
        return "its RandomSampler draws with replacement or a custom number of samples"
    if type(sampler) not in (RandomSampler, SequentialSampler):
        return f"it has a custom sampler ({type(sampler).__name__})"
    return None


def as_resumable(loader: Any, position: EpochPosition) -> Any:
    """``loader`` rebuilt as a :class:`ResumableLoader` with the same settings, or ``loader`` itself (with a log
    line saying why) when it is not a plain map-style ``DataLoader`` with a random or sequential sampler. A loader
    that says ``resumes_itself`` (:class:`ldm.data.stream_loader.StreamLoader`) is returned as it is."""
    if getattr(loader, "resumes_itself", False):
        return loader
    reason = _convertible(loader)
    if reason is not None:
        logger.info("train dataloader kept as it is (%s): resuming mid-epoch will not repeat its random choices",
                    reason)
        return loader
    workers = loader.num_workers
    return ResumableLoader(
        SeededItems(loader.dataset),
        batch_size=loader.batch_size,
        sampler=EpochOrder(len(loader.dataset), isinstance(loader.sampler, RandomSampler), position.root),
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if workers else None,
        generator=torch.Generator(),
        prefetch_factor=loader.prefetch_factor if workers else None,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
        in_order=loader.in_order,
        position=position,
    )


def resumable_train_data(data: Any, seed: int) -> EpochPosition | None:
    """Make ``data.train_dataloader()`` return :func:`as_resumable` loaders sharing one :class:`EpochPosition`
    (rooted at ``mix(seed, 1)``); None when ``data`` is not a LightningDataModule with a train dataloader."""
    if not isinstance(data, pl.LightningDataModule) or not is_overridden("train_dataloader", data):
        return None
    position = EpochPosition(root=mix(seed, 1))
    build = data.train_dataloader

    def train_dataloader() -> Any:
        return as_resumable(build(), position)

    data.train_dataloader = train_dataloader
    return position
