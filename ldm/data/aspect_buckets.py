"""Aspect-ratio bucketing: train on images at their own shape instead of a square crop.

A set of buckets ``(w, h)`` covers the aspect ratios from ``1/max_aspect`` to ``max_aspect`` with about the same
pixel area ``base_size²``: for every width ``w = min_side, min_side + step, ..., max_side`` the height is the
largest multiple of ``step`` with ``w·h ≤ base_size²`` (kept when it lies in ``[min_side, max_side]``). An image of
size ``W × H`` goes to the bucket whose aspect is nearest in log scale, ``argmin_b |log(W/H) − log(w_b/h_b)|``, is
scaled to cover it (``s = max(w_b/W, h_b/H)``) and centre-cropped to exactly ``w_b × h_b``. Batches are formed
within one bucket, so every batch has one shape.

* image folders (map-style datasets): :class:`AspectBucketBatchSampler`, a seeded, distributed batch sampler;
* shard streams: :class:`BucketBatcher`, one buffer per bucket, a batch emitted as soon as a buffer is full.

Config (the ``aspect_buckets:`` mapping of :class:`ldm.data.image_folder.ImageFolderDataset` and
:class:`ldm.data.laion.WebDataModuleFromConfig`): ``base_size`` (default: the dataset's ``size``, else 512),
``step`` (64), ``min_side`` (``base_size // 2``), ``max_side`` (``2 · base_size``), ``max_aspect`` (2.0).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import BatchSampler, Sampler

from ldm.cli.resumable_data import mix
from ldm.util import ConfigError

_KEYS = ("base_size", "step", "min_side", "max_side", "max_aspect")


@dataclass(frozen=True)
class AspectBuckets:
    """The bucket sizes ``sizes[i] = (width, height)``, sorted by aspect ``width / height``."""

    sizes: tuple[tuple[int, int], ...]

    @classmethod
    def build(cls, base_size: int = 512, step: int = 64, min_side: int | None = None, max_side: int | None = None,
              max_aspect: float = 2.0) -> AspectBuckets:
        """Buckets of area ≤ ``base_size²`` as the module docstring describes."""
        min_side = base_size // 2 if min_side is None else min_side
        max_side = 2 * base_size if max_side is None else max_side
        if step <= 0 or base_size % step or min_side % step or max_side % step:
            raise ConfigError(f"aspect_buckets: base_size ({base_size}), min_side ({min_side}) and max_side "
                              f"({max_side}) must be positive multiples of step ({step}).")
        if not 0 < min_side <= base_size <= max_side or max_aspect < 1:
            raise ConfigError(f"aspect_buckets: need 0 < min_side ≤ base_size ≤ max_side and max_aspect ≥ 1; got "
                              f"{min_side}, {base_size}, {max_side}, {max_aspect}.")
        area, sizes = base_size * base_size, set()
        for width in range(min_side, max_side + 1, step):
            height = min(area // width // step * step, max_side)
            if height >= min_side and max(width, height) <= max_aspect * min(width, height):
                sizes.add((width, height))
        return cls(tuple(sorted(sizes, key=lambda wh: (wh[0] / wh[1], wh[0]))))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], default_base: int | None = None) -> AspectBuckets:
        """From an ``aspect_buckets:`` mapping; ``default_base`` stands in for a missing ``base_size``."""
        unknown = sorted(set(config) - set(_KEYS))
        if unknown:
            raise ConfigError(f"aspect_buckets: unknown key(s) {unknown}; allowed: {list(_KEYS)}.")
        params = dict(config)
        params.setdefault("base_size", default_base or 512)
        return cls.build(**params)

    def __len__(self) -> int:
        return len(self.sizes)

    def nearest(self, width: int, height: int) -> int:
        """Index of the bucket nearest to a ``width × height`` image's aspect, in log scale (ties: the lower)."""
        log_aspect = math.log(width / height)
        return min(range(len(self.sizes)),
                   key=lambda i: abs(log_aspect - math.log(self.sizes[i][0] / self.sizes[i][1])))

    def resize(self, image: Image.Image, bucket: int, random_crop: bool = False) -> Image.Image:
        """``image`` scaled to cover bucket ``bucket`` and cropped (centre, or a random offset) to its size."""
        target_w, target_h = self.sizes[bucket]
        scale = max(target_w / image.width, target_h / image.height)
        new_w = max(target_w, round(image.width * scale))
        new_h = max(target_h, round(image.height * scale))
        image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
        if random_crop:
            left = int(torch.randint(0, new_w - target_w + 1, ()).item())
            top = int(torch.randint(0, new_h - target_h + 1, ()).item())
        else:
            left, top = (new_w - target_w) // 2, (new_h - target_h) // 2
        return image.crop((left, top, left + target_w, top + target_h))


class AspectBucketBatchSampler(BatchSampler):
    """Batches of dataset indices that share a bucket, reshuffled each epoch from ``(seed, epoch)``.

    Epoch ``e``: each bucket's indices are permuted (when ``shuffle``) with a generator seeded by ``mix(seed, e)``,
    cut into batches of ``batch_size`` (a bucket's last, smaller batch kept unless ``drop_last``), and the batches
    permuted; replica ``rank`` of ``num_replicas`` takes batches ``rank, rank + R, ...`` after the list is padded
    by repeating its first batches to a multiple of ``R`` (truncated instead when ``drop_last``), so every
    replica runs the same number of steps.

    ``sampler`` is only read for its distributed settings: under Lightning's DDP the ``DistributedSampler`` it
    injects here gives ``num_replicas``, ``rank`` and ``seed`` (unless those are passed explicitly).

    :param bucket_ids: the bucket of every dataset index.
    """

    def __init__(self, sampler: Sampler | None, batch_size: int, drop_last: bool, bucket_ids: Sequence[int] = (),
                 shuffle: bool = True, seed: int | None = None, num_replicas: int | None = None,
                 rank: int | None = None):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1 for bucketed batches, got {batch_size}.")
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.bucket_ids, self.shuffle = list(bucket_ids), shuffle
        self.num_replicas = num_replicas if num_replicas is not None else getattr(sampler, "num_replicas", 1)
        self.rank = rank if rank is not None else getattr(sampler, "rank", 0)
        self.seed = seed if seed is not None else getattr(sampler, "seed", 0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(mix(self.seed, self.epoch) & 0x7FFF_FFFF_FFFF_FFFF)
        members: dict[int, list[int]] = {}
        for index, bucket in enumerate(self.bucket_ids):
            members.setdefault(bucket, []).append(index)
        batches = []
        for bucket in sorted(members):
            indices = members[bucket]
            if self.shuffle:
                indices = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def _replica_batches(self) -> list[list[int]]:
        batches, replicas = self._all_batches(), self.num_replicas
        if replicas > 1 and len(batches) % replicas:
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % replicas]
            else:
                short = replicas - len(batches) % replicas
                batches = batches + [batches[i % len(batches)] for i in range(short)]
        return batches[self.rank::replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._replica_batches())

    def __len__(self) -> int:
        return len(self._replica_batches())


class BucketBatcher:
    """The batching stage of a shard stream: one buffer per bucket key; :meth:`add` returns a full batch (the
    buffer's ``batch_size`` entries in arrival order) as soon as one fills, else None. Entries are
    ``(raw index, example)``; :meth:`pending` lists the raw indices still buffered (a resumable position)."""

    def __init__(self, batch_size: int):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        self.batch_size = batch_size
        self.buffers: dict[Any, list[tuple[int, Any]]] = {}

    def add(self, key: Any, index: int, example: Any) -> list[tuple[int, Any]] | None:
        buffer = self.buffers.setdefault(key, [])
        buffer.append((index, example))
        if len(buffer) < self.batch_size:
            return None
        del self.buffers[key]
        return buffer

    def pending(self) -> list[int]:
        return sorted(index for buffer in self.buffers.values() for index, _ in buffer)
