"""The shard stream: shard specs, one pass sees every sample once, seeded shuffling, splitting by rank (also in
two spawned gloo processes), exact resume, broken samples skipped and counted."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ldm.cli.resumable_data import EpochPosition
from ldm.data.aspect_buckets import AspectBuckets
from ldm.data.shard_lists import expand_shards
from ldm.data.stream_loader import StreamLoader
from ldm.data.webdataset_stream import ShardStream, StreamOptions, dict_collation_fn
from ldm.util import ConfigError
from tests.shard_fakes import colour_of, default_members, image_bytes, keys_of, write_shards


def _loader(urls: list[str], workers: int = 0, **options) -> StreamLoader:
    options.setdefault("batch_size", 2)
    buckets = options.pop("buckets", None)
    stream = ShardStream(urls, StreamOptions(**options), buckets=buckets)
    return StreamLoader(stream, num_workers=workers, position=EpochPosition(root=0))


def _all_keys(count: int) -> list[str]:
    return [f"{n:08d}" for n in range(count)]


# shard specs -------------------------------------------------------------------------------------------------------

def test_shard_specs_brace_list_file_and_tar_base(tmp_path: Path) -> None:
    assert expand_shards("d/{000..002}.tar") == ["d/000.tar", "d/001.tar", "d/002.tar"]
    assert expand_shards(["a/{0..1}.tar", "b.tar"], tar_base="/data") == ["/data/a/0.tar", "/data/a/1.tar",
                                                                          "/data/b.tar"]
    assert expand_shards("pipe:cat x.tar", tar_base="/data") == ["pipe:cat x.tar"]
    listing = tmp_path / "train.txt"
    listing.write_text("# shards\nshards/{0..1}.tar\n\n/abs/2.tar\n")
    assert expand_shards(str(listing)) == [str(tmp_path / "shards/0.tar"), str(tmp_path / "shards/1.tar"),
                                           "/abs/2.tar"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="lists no shards"):
        expand_shards(str(tmp_path / "empty.txt"))
    with pytest.raises(ConfigError, match="shards"):
        expand_shards([])


# one pass ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_one_pass_serves_every_sample_once_in_the_ldm_format(tmp_path: Path, workers: int) -> None:
    urls = write_shards(tmp_path, [4, 4, 4, 4])
    batches = list(_loader(urls, workers, batch_size=2, shuffle=5))
    assert sorted(keys_of(batches)) == _all_keys(16)
    batch = batches[0]
    assert batch["image"].shape == (2, 8, 12, 3) and batch["image"].dtype == torch.float32
    assert batch["jpg"] is batch["image"] and batch["txt"] == batch["caption"]
    for key, image, caption in zip(batch["__key__"], batch["image"], batch["txt"]):
        number = int(key)
        assert caption == f"caption {number}"
        expected = torch.tensor(colour_of(number), dtype=torch.float32) / 127.5 - 1.0
        torch.testing.assert_close(image, expected.expand(8, 12, 3))


def test_shuffle_is_seeded(tmp_path: Path) -> None:
    urls = write_shards(tmp_path, [6, 6, 6])
    first = keys_of(list(_loader(urls, shuffle=8, seed=3)))
    assert first == keys_of(list(_loader(urls, shuffle=8, seed=3)))
    assert first != keys_of(list(_loader(urls, shuffle=8, seed=4)))
    assert sorted(first) == _all_keys(18) and first != _all_keys(18)
    assert keys_of(list(_loader(urls))) == _all_keys(18)  # no shuffle: the shards' order


def test_epochs_reshuffle_and_repeat_continues(tmp_path: Path) -> None:
    urls = write_shards(tmp_path, [4, 4])
    loader = _loader(urls, shuffle=4, seed=1)
    epoch0, epoch1 = keys_of(list(loader)), keys_of(list(loader))
    assert sorted(epoch0) == sorted(epoch1) == _all_keys(8) and epoch0 != epoch1
    endless = iter(_loader(urls, shuffle=4, seed=1, repeat=True))
    twelve = keys_of([next(endless) for _ in range(6)])
    assert twelve[:8] == epoch0 and set(twelve[8:]) <= set(_all_keys(8))


def test_uneven_shards_split_by_rank_are_disjoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3 shards on 2 ranks: rank 0 reads shards 0 and 2, rank 1 shard 1 — disjoint, complete, unequal counts."""
    urls = write_shards(tmp_path, [2, 2, 2])
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append(keys_of(list(_loader(urls))))
    assert [len(keys) for keys in seen] == [4, 2]
    assert sorted(seen[0] + seen[1]) == _all_keys(6)


def _ddp_rank(rank: int, port: int, urls: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        keys = keys_of(list(_loader(urls, shuffle=4, seed=7)))
        Path(out, f"rank{rank}.txt").write_text("\n".join(keys))
    finally:
        dist.destroy_process_group()


def test_two_ddp_processes_see_disjoint_samples_covering_the_set(tmp_path: Path) -> None:
    urls = write_shards(tmp_path / "shards", [3, 3, 3, 3])
    port = 29500 + os.getpid() % 1000
    mp.start_processes(_ddp_rank, args=(port, urls, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1))
    assert len(rank0) == len(rank1) == 6 and not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == _all_keys(12)


# resume ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("workers", "repeat", "bucketed", "consumed"),
                         [(0, False, False, 3), (2, False, False, 3), (0, True, True, 4)])
def test_resume_continues_with_the_next_unseen_batch(tmp_path: Path, workers: int, repeat: bool, bucketed: bool,
                                                     consumed: int) -> None:
    def members(n: int) -> dict[str, bytes]:  # two shapes when bucketed
        return default_members(n, (8, 16) if bucketed and n % 3 == 0 else (16, 8))

    urls = write_shards(tmp_path, [5, 5, 5, 5], members=members)
    buckets = AspectBuckets.build(16, 8, 8, 32, max_aspect=4) if bucketed else None
    options = dict(batch_size=2, shuffle=6, seed=11, repeat=repeat, buckets=buckets)
    uninterrupted = iter(_loader(urls, workers, **options))
    expected = [next(uninterrupted)["__key__"] for _ in range(consumed + 3)]

    loader = _loader(urls, workers, **options)
    batches = iter(loader)
    assert [next(batches)["__key__"] for _ in range(consumed)] == expected[:consumed]
    state = loader.position_state()
    if bucketed:
        assert any(worker["pending"] for worker in state["workers"])  # the bucket buffers are part of the state
    resumed = _loader(urls, workers, **options)
    resumed.resume_from(state)
    assert [batch["__key__"] for batch, _ in zip(resumed, range(3))] == expected[consumed:]


def test_a_finished_epoch_resumes_at_the_next_epoch(tmp_path: Path) -> None:
    urls = write_shards(tmp_path, [4, 4])
    loader = _loader(urls, shuffle=4, seed=2)
    list(loader)
    state = loader.position_state()
    assert state["complete"] and state["epoch"] == 0
    second = keys_of(list(loader))
    fresh = _loader(urls, shuffle=4, seed=2)
    fresh.resume_from(state)
    assert keys_of(list(fresh)) == second


# broken samples ----------------------------------------------------------------------------------------------------

def test_broken_samples_are_skipped_counted_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def members(n: int) -> dict[str, bytes]:
        if n in (1, 6):  # truncated jpg
            return {"jpg": image_bytes((12, 8), colour_of(n), "JPEG")[:60], "txt": b"broken"}
        if n == 2:  # no caption anywhere
            return {"png": image_bytes((12, 8), colour_of(n))}
        return default_members(n)

    urls = write_shards(tmp_path, [5, 5], members=members)
    loader = _loader(urls, batch_size=1)
    with caplog.at_level(logging.WARNING, logger="ldm.data.stream_samples"):
        keys = keys_of(list(loader))
    assert keys == [k for k in _all_keys(10) if int(k) not in (1, 2, 6)]
    assert loader.skipped == {"bad_image": 2, "no_caption": 1}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3  # bad_image in each shard, no_caption once
    assert sum(urls[0] in m and "bad_image" in m for m in messages) == 1


def test_dict_collation_combines_by_type() -> None:
    batch = dict_collation_fn([{"a": 1, "t": torch.ones(2), "n": np.zeros(3), "s": "x", "only": 0},
                               {"a": 2, "t": torch.zeros(2), "n": np.ones(3), "s": "y"}])
    assert set(batch) == {"a", "t", "n", "s"}
    np.testing.assert_array_equal(batch["a"], [1, 2])
    assert batch["t"].shape == (2, 2) and batch["n"].shape == (2, 3) and batch["s"] == ["x", "y"]
