"""DataModuleFromConfig, WrappedDataset and worker_init_fn."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader

from ldm.data.base import Txt2ImgIterableBaseDataset
from ldm.data.datamodule import DataModuleFromConfig, WrappedDataset, worker_init_fn

BUILT: list[int] = []


class RangeData:
    """Not a torch Dataset: just ``__len__`` and ``__getitem__`` (what ``wrap: true`` is for)."""

    def __init__(self, n: int):
        BUILT.append(n)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int) -> dict[str, int]:
        return {"index": idx}


class StreamedIds(Txt2ImgIterableBaseDataset):
    def __iter__(self) -> Iterator[int]:
        yield from self.sample_ids


def range_config(n: int) -> dict:
    return {"target": "tests.test_datamodule.RangeData", "params": {"n": n}}


def test_only_configured_splits_get_dataloaders() -> None:
    dm = DataModuleFromConfig(batch_size=3, train=range_config(10), validation=range_config(4))
    assert dm.num_workers == 6
    assert is_overridden("train_dataloader", dm) and is_overridden("val_dataloader", dm)
    assert not is_overridden("test_dataloader", dm) and not is_overridden("predict_dataloader", dm)


def test_setup_builds_each_split_once_and_wraps() -> None:
    BUILT.clear()
    dm = DataModuleFromConfig(batch_size=4, train=range_config(10), validation=range_config(5), wrap=True,
                              num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert sorted(BUILT) == [5, 10]
    assert isinstance(dm.datasets["train"], WrappedDataset) and len(dm.datasets["validation"]) == 5


def test_train_loader_shuffles_and_val_loader_keeps_order() -> None:
    pl.seed_everything(0)
    dm = DataModuleFromConfig(batch_size=10, train=range_config(10), validation=range_config(10), num_workers=0)
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))["index"]
    val = next(iter(dm.val_dataloader()))["index"]
    assert sorted(train.tolist()) == list(range(10)) and train.tolist() != list(range(10))
    assert val.tolist() == list(range(10))
    shuffled = DataModuleFromConfig(batch_size=10, validation=range_config(10), num_workers=0,
                                    shuffle_val_dataloader=True)
    shuffled.setup("fit")
    assert next(iter(shuffled.val_dataloader()))["index"].tolist() != list(range(10))


def test_worker_init_fn_gives_iterable_workers_disjoint_slices() -> None:
    dataset = StreamedIds(num_records=8, valid_ids=list(range(8)))
    loader = DataLoader(dataset, batch_size=None, num_workers=2, worker_init_fn=worker_init_fn)
    seen = [int(x) for x in loader]
    assert sorted(seen) == list(range(8))


@pytest.mark.parametrize("iterable", [False, True])
def test_worker_init_fn_seeds_numpy_as_the_original(monkeypatch: pytest.MonkeyPatch, iterable: bool) -> None:
    """Seed ``key[0] + worker_id`` of numpy's state; for iterable datasets ``key[j] + worker_id`` with ``j`` drawn
    by ``np.random.choice`` (the key read after that draw)."""
    dataset = StreamedIds(num_records=6, valid_ids=list(range(6))) if iterable else WrappedDataset(range(6))
    info = SimpleNamespace(dataset=dataset, id=1, num_workers=2)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
    np.random.seed(7)
    if iterable:
        index = np.random.choice(len(np.random.get_state()[1]), 1)
        key = int(np.random.get_state()[1][index][0])
    else:
        key = int(np.random.get_state()[1][0])
    np.random.seed((key + 1) % 2**32)
    expected = np.random.random(3)
    np.random.seed(7)
    worker_init_fn(1)
    np.testing.assert_array_equal(np.random.random(3), expected)
    if iterable:
        assert dataset.sample_ids == [3, 4, 5]


def test_iterable_train_split_is_not_shuffled_and_uses_worker_init_fn() -> None:
    params = {"num_records": 6, "valid_ids": [0, 1, 2, 3, 4, 5]}
    config = {"target": "tests.test_datamodule.StreamedIds", "params": params}
    dm = DataModuleFromConfig(batch_size=6, train=config, num_workers=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.worker_init_fn is worker_init_fn
    assert torch.equal(next(iter(loader)), torch.arange(6))


def test_original_private_loader_methods() -> None:
    dm = DataModuleFromConfig(batch_size=10, validation=range_config(10), test=range_config(10),
                              predict=range_config(10), num_workers=0)
    dm.setup("fit")
    assert next(iter(dm._val_dataloader()))["index"].tolist() == list(range(10))
    assert next(iter(dm._test_dataloader(shuffle=True)))["index"].tolist() != list(range(10))
    assert next(iter(dm._predict_dataloader(shuffle=True)))["index"].tolist() == list(range(10))
