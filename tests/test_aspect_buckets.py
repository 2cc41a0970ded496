"""Aspect-ratio buckets: the bucket table, nearest-aspect assignment, resize-and-crop, the distributed batch
sampler, the image-folder wiring and the bucketing stage of the shard stream."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DistributedSampler

from ldm.cli.resumable_data import EpochPosition
from ldm.data.aspect_buckets import AspectBucketBatchSampler, AspectBuckets, BucketBatcher
from ldm.data.bucketed_datamodule import BucketedDataModuleFromConfig
from ldm.data.image_folder import ImageFolderDataset
from ldm.data.stream_loader import StreamLoader
from ldm.data.webdataset_stream import ShardStream, StreamOptions
from ldm.util import ConfigError
from tests.shard_fakes import default_members, keys_of, write_shards

# base 64, step 16, max aspect 2: w=48 → h=⌊4096/48/16⌋·16=80, w=64 → 64, w=80 → 48; the others exceed 2:1.
SMALL = AspectBuckets.build(base_size=64, step=16, max_aspect=2.0)


def test_bucket_table_closed_form() -> None:
    assert SMALL.sizes == ((48, 80), (64, 64), (80, 48))
    sd = AspectBuckets.build()  # 512 px, step 64: every bucket a multiple of 64 with area ≤ 512²
    assert (512, 512) in sd.sizes and (384, 640) in sd.sizes and (640, 384) in sd.sizes
    for width, height in sd.sizes:
        assert width % 64 == 0 and height % 64 == 0
        assert 512 * 512 - 64 * width < width * height <= 512 * 512
        assert max(width, height) <= 2 * min(width, height)
    aspects = [w / h for w, h in sd.sizes]
    assert aspects == sorted(aspects)
    with pytest.raises(ConfigError, match="multiples of step"):
        AspectBuckets.build(base_size=100, step=64)
    with pytest.raises(ConfigError, match="unknown key"):
        AspectBuckets.from_config({"base": 512})


@pytest.mark.parametrize(("size", "bucket"), [((100, 100), 1), ((200, 100), 2), ((100, 150), 0), ((77, 100), 0),
                                              ((78, 100), 1), ((100, 77), 2), ((100, 78), 1)])
def test_nearest_bucket_in_log_aspect(size: tuple[int, int], bucket: int) -> None:
    """Between 0.6 (48/80) and 1 the boundary is the geometric mean √0.6 ≈ 0.7746: 77/100 below, 78/100 above."""
    assert math.sqrt(0.6) > 0.77 and math.sqrt(0.6) < 0.78
    assert SMALL.nearest(*size) == bucket


def test_resize_covers_the_bucket_and_crops_the_centre() -> None:
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 100))  # a blue band on the far left, cropped away by the centre crop
    out = SMALL.resize(image, 2)  # scale max(80/200, 48/100) = 0.48 → 96 × 48, crop 8 px each side → 80 × 48
    assert out.size == (80, 48)
    pixels = np.asarray(out)
    assert pixels[:, 8:].tolist() == np.full((48, 72, 3), (255, 0, 0)).tolist()
    assert (pixels[:, 0, 2] > 100).all()  # the band's remaining 1.6 px are at the left edge


def _bucket_ids(count: int) -> list[int]:
    return [n % 3 for n in range(count)]


def test_batch_sampler_one_bucket_per_batch_every_index_once_seeded() -> None:
    ids = _bucket_ids(25)  # buckets of 9, 8 and 8 images → 3 + 2 + 2 batches of up to 4
    sampler = AspectBucketBatchSampler(None, 4, False, bucket_ids=ids, seed=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7
    assert sorted(i for batch in batches for i in batch) == list(range(25))
    assert all(len({ids[i] for i in batch}) == 1 for batch in batches)
    assert batches == list(AspectBucketBatchSampler(None, 4, False, bucket_ids=ids, seed=5))
    sampler.set_epoch(1)
    assert list(sampler) != batches
    dropped = list(AspectBucketBatchSampler(None, 4, True, bucket_ids=ids, seed=5))
    assert all(len(batch) == 4 for batch in dropped) and len(dropped) == 6


def test_batch_sampler_shares_batches_between_replicas() -> None:
    ids = _bucket_ids(25)
    parts = [list(AspectBucketBatchSampler(None, 4, False, bucket_ids=ids, seed=1, num_replicas=2, rank=r))
             for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 4  # 7 batches padded to 8 with the first one again
    whole = list(AspectBucketBatchSampler(None, 4, False, bucket_ids=ids, seed=1))
    assert parts[0] + parts[1] == whole[0::2] + (whole + whole[:1])[1::2]
    seen = [i for part in parts for batch in part for i in batch]
    assert sorted(set(seen)) == list(range(25)) and len(seen) - 25 == len(whole[0])
    # under Lightning's DDP the injected DistributedSampler gives rank and world size
    dataset = list(range(25))
    injected = AspectBucketBatchSampler(DistributedSampler(dataset, num_replicas=2, rank=1, seed=1), 4, False,
                                        bucket_ids=ids, seed=1)
    assert list(injected) == parts[1]


def test_image_folder_buckets_through_the_data_module(tmp_path: Path) -> None:
    sizes = [(40, 20), (20, 40), (30, 30), (44, 22), (21, 40), (31, 30), (40, 21)]
    for number, size in enumerate(sizes):
        Image.new("RGB", size, (number * 30, 0, 0)).save(tmp_path / f"{number}.png")
    params = {"root": str(tmp_path), "size": 16, "flip_p": 0.0,
              "aspect_buckets": {"step": 8, "min_side": 8, "max_side": 32, "max_aspect": 4}}
    data = BucketedDataModuleFromConfig(batch_size=2, num_workers=0, seed=3,
                                        train={"target": "ldm.data.image_folder.ImageFolderDataset", "params": params})
    data.setup()
    dataset = data.datasets["train"]
    assert dataset.buckets.sizes == ((8, 32), (16, 16), (24, 8), (32, 8))
    seen = []
    for batch in data.train_dataloader():
        shape = tuple(batch["image"].shape[1:3])
        assert all(tuple(reversed(dataset.buckets.sizes[dataset.bucket_ids[int(Path(p).stem)]])) == shape
                   for p in batch["file_path_"])
        seen += [int(Path(p).stem) for p in batch["file_path_"]]
    assert sorted(seen) == list(range(7))
    plain = ImageFolderDataset(str(tmp_path), size=16)
    assert plain.bucket_ids is None and plain[0]["image"].shape == (16, 16, 3)


def test_stream_batches_within_a_bucket(tmp_path: Path) -> None:
    def members(n: int) -> dict[str, bytes]:
        return default_members(n, [(64, 40), (40, 64), (50, 50)][n % 3])

    urls = write_shards(tmp_path, [7, 7], members=members)
    stream = ShardStream(urls, StreamOptions(batch_size=2, shuffle=5, seed=2), buckets=SMALL)
    batches = list(StreamLoader(stream, position=EpochPosition(root=0)))
    expected_shape = {0: (48, 80, 3), 1: (80, 48, 3), 2: (64, 64, 3)}  # (H, W, 3) of each sample's bucket
    for batch in batches:
        shapes = {expected_shape[int(key) % 3] for key in batch["__key__"]}
        assert len(shapes) == 1 and tuple(batch["image"].shape[1:]) == shapes.pop()
    keys = keys_of(batches)
    assert len(keys) == len(set(keys)) == 12  # 5, 5 and 4 per bucket: one left over in two buckets


def test_bucket_batcher_emits_full_buffers_and_reports_pending() -> None:
    batcher = BucketBatcher(2)
    assert batcher.add("a", 0, "x") is None and batcher.add("b", 1, "y") is None
    assert batcher.pending() == [0, 1]
    assert batcher.add("a", 2, "z") == [(0, "x"), (2, "z")]
    assert batcher.pending() == [1]


def test_lightning_injects_its_distributed_sampler_into_the_batch_sampler() -> None:
    """What Lightning's DDP does to a train loader built inside a ``*_dataloader`` hook (its private helpers)."""
    from lightning_fabric.utilities.data import _replace_dunder_methods
    from pytorch_lightning.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    dataset, ids = list(range(25)), _bucket_ids(25)
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = DataLoader(dataset, batch_sampler=AspectBucketBatchSampler(SequentialSampler(dataset), 4, False,
                                                                            bucket_ids=ids, seed=1))
    replaced = _update_dataloader(loader, DistributedSampler(dataset, num_replicas=2, rank=1, seed=0))
    expected = list(AspectBucketBatchSampler(None, 4, False, bucket_ids=ids, seed=1, num_replicas=2, rank=1))
    assert list(replaced.batch_sampler) == expected
