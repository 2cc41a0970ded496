"""A reproducible stream of training batches from webdataset tar shards (LAION / img2dataset layout).

What one DataLoader worker does in one pass (``epoch``) over the shards::

    shard URLs ──shuffled with mix(seed, epoch)──► wds.split_by_node (rank of world) ──► every W-th from the
    worker's slot ──tarfile_samples──► raw samples (bytes) ──wds.shuffle, buffer seeded per (epoch, rank, slot)──►
    raw index r = 0, 1, ... ──parse, filter, decode, [bucket resize], make_example (generators seeded
    mix(pass seed, r))──► BucketBatcher ──collate──► batch + "__stream__" position

Everything random is a function of ``(seed, epoch, rank, slot, r)``, so a worker that is told "you are slot ``s``,
skip raw samples ``< raw`` except ``pending``" rebuilds exactly the state it had: skipping needs no decoding (the
skipped samples only pass through the tar reader and the shuffle buffer), and the ``pending`` samples are the ones
the batch buffers held. :class:`ldm.data.stream_loader.StreamLoader` keeps those positions per slot and assigns
slots to workers so that a resumed run continues with the next unseen batch.

Broken samples (unreadable shard, missing image or caption, undecodable image, bad json) are skipped and counted;
the counts travel with each batch's position. A pass drops the samples left in partly filled batch buffers at its
end (as webdataset's ``batched(partial=False)``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples
from webdataset.utils import pytorch_worker_info

from ldm.cli.resumable_data import mix, seed_generators
from ldm.data.aspect_buckets import AspectBuckets, BucketBatcher
from ldm.data.stream_samples import (
    ParsedSample,
    SampleFilters,
    SkipCounter,
    decode_image,
    has_original_size,
    parse_sample,
)
from ldm.util import ConfigError

logger = logging.getLogger(__name__)

#: The key under which every batch carries its worker's position (removed by the StreamLoader).
POSITION_KEY = "__stream__"

ExampleMaker = Callable[[Image.Image, ParsedSample], dict[str, Any]]


def dict_collation_fn(samples: Sequence[dict[str, Any]], combine_tensors: bool = True,
                      combine_scalars: bool = True) -> dict[str, Any]:
    """A list of example dicts → one batch dict over the keys all examples share: tensors stacked (B, ...),
    numpy arrays stacked, ints/floats as a numpy array, anything else (strings, dicts) as a list. Keys whose
    values are the same objects (``"jpg"`` and ``"image"``) share one stacked result."""
    keys = set.intersection(*(set(sample) for sample in samples))
    batch: dict[str, Any] = {}
    stacked: dict[tuple[int, ...], Any] = {}
    for key in sorted(keys):
        values = [sample[key] for sample in samples]
        if isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            if combine_scalars:
                batch[key] = np.array(values)
        elif isinstance(values[0], (torch.Tensor, np.ndarray)):
            if combine_tensors:
                identity = tuple(id(value) for value in values)
                if identity not in stacked:
                    stack = torch.stack if isinstance(values[0], torch.Tensor) else np.stack
                    stacked[identity] = stack(values)
                batch[key] = stacked[identity]
        else:
            batch[key] = values
    return batch


def image_to_model_range(image: Image.Image) -> torch.Tensor:
    """RGB image → ``(H, W, 3)`` float32 tensor ``x / 127.5 − 1`` in [-1, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).float() / 127.5 - 1.0


def default_example(image: Image.Image, sample: ParsedSample, image_key: str = "jpg") -> dict[str, Any]:
    """The LDM batch entry of one sample: the image under ``image_key`` and ``"image"``, the caption under
    ``"txt"`` and ``"caption"``, plus ``__key__`` / ``__url__`` (sample and shard) and the json as ``"json"``."""
    pixels = image_to_model_range(image)
    return {image_key: pixels, "image": pixels, "txt": sample.caption, "caption": sample.caption,
            "__key__": sample.key, "__url__": sample.shard, "json": sample.meta}


@dataclass
class StreamOptions:
    """How a :class:`ShardStream` reads its shards.

    :param batch_size: examples per batch (batches are formed in the workers).
    :param shuffle: shuffle buffer in samples (0: the shards' own order).
    :param shard_shuffle: shuffle the shard order each pass (default: when ``shuffle > 0``, as the original).
    :param repeat: start the next pass when one ends (an endless stream, as the original's training data).
    :param multinode: split the shards by rank (``wds.split_by_node``); else refuse to run on several ranks.
    :param image_key: the image member (``jpg``, ``png``, ...); None takes the first of jpg/jpeg/png/webp.
    :param seed: root of every random choice of the stream.
    """

    batch_size: int
    shuffle: int = 0
    shard_shuffle: bool | None = None
    repeat: bool = False
    multinode: bool = True
    image_key: str | None = None
    seed: int = 0


@dataclass
class WorkerPosition:
    """Where one worker slot stands: in pass ``epoch``, raw samples ``< raw`` are done except ``pending`` (held
    in batch buffers); ``skipped`` counts the samples it dropped, by reason, over its life."""

    slot: int = 0
    epoch: int = 0
    raw: int = 0
    pending: list[int] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> WorkerPosition:
        return cls(int(state["slot"]), int(state["epoch"]), int(state["raw"]), [int(i) for i in state["pending"]],
                   {str(k): int(v) for k, v in state["skipped"].items()})


@dataclass
class StreamPlan:
    """What the workers of the next iteration do: pass ``epoch`` from the start, except slots listed in
    ``start``; physical worker ``p`` of ``W`` serves slot ``(p + rotation) mod W``."""

    epoch: int = 0
    rotation: int = 0
    start: dict[int, WorkerPosition] = field(default_factory=dict)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _seeded(seed: int, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` with Python's, numpy's and torch's generators seeded from ``seed``; in the main process
    the previous generator states come back afterwards."""
    if get_worker_info() is not None:
        seed_generators(seed)
        return function(*args)
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        seed_generators(seed)
        return function(*args)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class ShardStream(IterableDataset):
    """An iterable dataset of batches (dicts made by ``collate``) read from ``urls`` as the module docstring
    describes; set :attr:`plan` before each iteration (the :class:`StreamLoader` does).

    :param make_example: ``(RGB image, parsed sample) → example dict``; it may draw random numbers.
    :param filters: the on-purpose filters (size, aspect, watermark, unsafe, words).
    :param buckets: aspect-ratio buckets; images are resized to their bucket before ``make_example`` and batched
        per bucket.
    """

    def __init__(self, urls: Sequence[str], options: StreamOptions, make_example: ExampleMaker = default_example,
                 filters: SampleFilters | None = None, buckets: AspectBuckets | None = None,
                 collate: Callable[[list[dict[str, Any]]], dict[str, Any]] = dict_collation_fn):
        super().__init__()
        if not urls:
            raise ConfigError("a shard stream needs at least one shard; check 'shards'.")
        self.urls, self.options = list(urls), options
        self.make_example, self.filters, self.buckets, self.collate = make_example, filters or SampleFilters(), \
            buckets, collate
        self.plan = StreamPlan()

    def _node_shards(self, ordered: list[str]) -> list[str]:
        if self.options.multinode:
            return list(wds.split_by_node(ordered))
        try:
            return list(wds.single_node_only(ordered))
        except ValueError as error:
            raise ConfigError("the data stream has multinode: false but runs on several ranks; set "
                              "'multinode: true' so that each rank reads its own shards.") from error

    def shards_of(self, epoch: int, slot: int, slots: int) -> list[str]:
        """The shards slot ``slot`` of ``slots`` reads in pass ``epoch`` on this rank."""
        ordered = list(self.urls)
        shard_shuffle = self.options.shard_shuffle
        if shard_shuffle or (shard_shuffle is None and self.options.shuffle > 0):
            random.Random(mix(self.options.seed, epoch)).shuffle(ordered)
        return self._node_shards(ordered)[slot::slots]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        physical, slots = _worker()
        slot = (physical + self.plan.rotation) % slots
        position = self.plan.start.get(slot) or WorkerPosition(slot=slot, epoch=self.plan.epoch)
        counter = SkipCounter(position.skipped)
        while True:
            produced = yield from self._pass(position, slots, counter)
            if not self.options.repeat:
                return
            if not produced:
                raise ConfigError(f"a full pass over the shards of worker slot {slot} gave no batch (skipped: "
                                  f"{dict(counter.counts)}); give this worker more shards or relax the filters.")
            position = WorkerPosition(slot=slot, epoch=position.epoch + 1)

    def _pass(self, position: WorkerPosition, slots: int, counter: SkipCounter) -> Iterator[dict[str, Any]]:
        """One pass of one slot; returns whether it produced a batch."""
        shards = self.shards_of(position.epoch, position.slot, slots)
        rank, world = pytorch_worker_info()[:2]
        if not shards:
            logger.warning("worker slot %d of rank %d has no shard (%d shards for %d ranks × %d workers); it "
                           "serves nothing", position.slot, rank, len(self.urls), world, slots)
            return False
        pass_seed = mix(mix(self.options.seed, position.epoch), rank * slots + position.slot)
        raw: Iterator[dict[str, Any]] = iter(tarfile_samples(({"url": url} for url in shards),
                                                             handler=counter.tar_error))
        if self.options.shuffle > 0:
            raw = wds.shuffle(self.options.shuffle, rng=random.Random(pass_seed))(raw)
        batcher, pending, produced = BucketBatcher(self.options.batch_size), set(position.pending), False
        for index, sample in enumerate(raw):
            if index < position.raw and index not in pending:
                continue
            made = self._example(sample, mix(pass_seed, index), counter)
            if made is None:
                continue
            full = batcher.add(made[0], index, made[1])
            if full is None:
                continue
            batch = self.collate([example for _, example in full])
            batch[POSITION_KEY] = WorkerPosition(position.slot, position.epoch, index + 1, batcher.pending(),
                                                 dict(counter.counts)).as_dict()
            produced = True
            yield batch
        return produced

    def _example(self, raw: dict[str, Any], seed: int, counter: SkipCounter) -> tuple[int, dict[str, Any]] | None:
        """``(bucket, example)`` of one raw sample, or None when it is skipped (counted)."""
        sample = parse_sample(raw, self.options.image_key, counter)
        if sample is None:
            return None
        reason = self.filters.drop_before_decoding(sample.caption, sample.meta)
        if reason is None:
            image = decode_image(sample, counter)
            if image is None:
                return None
            if not has_original_size(sample.meta):
                reason = self.filters.drop_for_size(image.width, image.height)
        if reason is not None:
            counter.skip(reason, sample.shard, sample.key)
            return None
        bucket = self.buckets.nearest(image.width, image.height) if self.buckets else 0
        return bucket, _seeded(seed, self._make, image, bucket, sample)

    def _make(self, image: Image.Image, bucket: int, sample: ParsedSample) -> dict[str, Any]:
        if self.buckets is not None:
            image = self.buckets.resize(image, bucket)
        return self.make_example(image, sample)
