"""WebDataModuleFromConfig with the SD 2.x config schema: transforms, postprocess (AddMask, AddBW), filters, the
resumable state (also through a Lightning fit resumed from a checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from ldm.data.laion import AddBW, AddLR, AddMask, WebDataModuleFromConfig, identity, load_partial_from_config
from ldm.util import ConfigError
from tests.shard_fakes import default_members, image_bytes, keys_of, write_shards

SD2_SPLIT = {
    "shards": "{000000..000001}.tar",
    "shuffle": 4,
    "image_key": "png",
    "image_transforms": [
        {"target": "torchvision.transforms.Resize", "params": {"size": 8, "interpolation": 3}},
        {"target": "torchvision.transforms.CenterCrop", "params": {"size": 8}},
    ],
    "transforms": {"txt": "identity"},
    "postprocess": {"target": "ldm.data.laion.AddMask",
                    "params": {"mode": "256narrow", "p_drop": 0.25, "image_key": "png"}},
}


def _module(tmp_path: Path, train: dict[str, Any], **params: Any) -> WebDataModuleFromConfig:
    params.setdefault("num_workers", 0)
    return WebDataModuleFromConfig(tar_base=str(tmp_path), batch_size=2, train=train, seed=4, **params)


def test_sd2_config_schema_gives_inpainting_batches(tmp_path: Path) -> None:
    write_shards(tmp_path, [4, 4], members=lambda n: default_members(n, (16, 12)))
    data = _module(tmp_path, {**SD2_SPLIT, "repeat": False}, multinode=True, p_unsafe_threshold=0.1,
                   max_pwatermark=0.45, unknown_original_key=1)
    batches = list(data.train_dataloader())
    assert sorted(keys_of(batches)) == [f"{n:08d}" for n in range(8)]
    batch = batches[0]
    assert batch["png"].shape == batch["image"].shape == (2, 8, 8, 3)
    assert batch["mask"].shape == (2, 8, 8, 1) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(batch["masked_image"], batch["png"] * (batch["mask"] < 0.5))
    assert batch["txt"] == batch["caption"] == [f"caption {int(k)}" for k in batch["__key__"]]
    assert not hasattr(data, "val_dataloader") or data.validation is None


def test_filters_drop_by_metadata_size_and_words(tmp_path: Path) -> None:
    def members(n: int) -> dict[str, bytes]:
        meta: dict[str, Any] = {"caption": f"a photo {n}"}
        size = (16, 16)
        if n == 0:
            meta["pwatermark"] = 0.9
        if n == 1:
            meta["punsafe"] = 0.5
        if n == 2:
            meta.update(original_width=100, original_height=6)  # the original size counts, not the stored one
        if n == 3:
            size = (16, 4)  # no original size in the json: the decoded image's
        if n == 4:
            meta["pwatermark"] = None  # unknown score: kept
        caption = "a forbidden word" if n == 5 else f"a photo {n}"
        return {"png": image_bytes(size, (n, 0, 0)), "txt": caption.encode(), "json": json.dumps(meta).encode()}

    write_shards(tmp_path, [8], members=members)
    words = tmp_path / "filters.yaml"
    words.write_text("words: [Forbidden]\n")
    data = _module(tmp_path, {"shards": "000000.tar", "repeat": False}, min_size=8, max_pwatermark=0.5,
                   p_unsafe_threshold=0.5, filter_word_list=str(words))
    data.batch_size = 1
    assert sorted(keys_of(list(data.train_dataloader()))) == ["00000004", "00000006", "00000007"]
    assert data.skipped == {"pwatermark": 1, "punsafe": 1, "min_size": 2, "filter_word": 1}
    ratio = _module(tmp_path, {"shards": "000000.tar", "repeat": False}, max_aspect_ratio=3.0)
    ratio.batch_size = 1
    assert "00000002" not in keys_of(list(ratio.train_dataloader())) and ratio.skipped == {"aspect_ratio": 2}


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    write_shards(tmp_path, [2])
    with pytest.raises(ConfigError, match="filter_word_list"):
        _module(tmp_path, {"shards": "000000.tar"}, filter_word_list=str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"data.params.train: unknown key\(s\) \['shufle'\]"):
        _module(tmp_path, {"shards": "000000.tar", "shufle": 3}).train_dataloader()
    with pytest.raises(ConfigError, match="unknown mask mode"):
        AddMask(mode="1024")


def test_state_dict_resumes_the_next_batch(tmp_path: Path) -> None:
    write_shards(tmp_path, [6, 6, 6])
    split = {"shards": "{000000..000002}.tar", "shuffle": 5}
    expected = [b["__key__"] for b, _ in zip(_module(tmp_path, split).train_dataloader(), range(6))]
    data = _module(tmp_path, split)
    batches = iter(data.train_dataloader())
    for _ in range(4):
        next(batches)
    state = json.loads(json.dumps(data.state_dict()))  # checkpoint-friendly
    resumed = _module(tmp_path, split)
    resumed.load_state_dict(state)
    assert [b["__key__"] for b, _ in zip(resumed.train_dataloader(), range(2))] == expected[4:]


class _Recorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.keys: list[list[str]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.keys.append(list(batch["__key__"]))
        return (self.weight - batch["image"].mean()) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(data: WebDataModuleFromConfig, steps: int, root: Path, ckpt: str | None = None) -> tuple[_Recorder,
                                                                                                 pl.Trainer]:
    model = _Recorder()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))
    trainer.fit(model, datamodule=data, ckpt_path=ckpt)
    return model, trainer


def test_lightning_checkpoint_resumes_the_stream(tmp_path: Path) -> None:
    """The fit loop prefetches a batch ahead; the state counts the processed ones, so nothing is skipped."""
    write_shards(tmp_path, [6, 6])
    split = {"shards": "{000000..000001}.tar", "shuffle": 4}
    whole, _ = _fit(_module(tmp_path, split), 5, tmp_path)
    first, trainer = _fit(_module(tmp_path, split), 3, tmp_path)
    trainer.save_checkpoint(tmp_path / "step3.ckpt")
    rest, _ = _fit(_module(tmp_path, split), 5, tmp_path, ckpt=str(tmp_path / "step3.ckpt"))
    assert (len(first.keys), len(rest.keys)) == (3, 2) and first.keys + rest.keys == whole.keys


def test_add_bw_and_helpers() -> None:
    grey = torch.linspace(-1, 1, 12).reshape(2, 2, 3)[..., :1].expand(2, 2, 3)
    out = AddBW(image_key="jpg")({"jpg": grey})["lr"]
    torch.testing.assert_close(out, grey)  # a weighted mean with weights summing to 1 keeps a grey image
    assert identity("x") == "x"
    assert load_partial_from_config({"target": "builtins.round", "params": {"ndigits": 1}})(1.26) == 1.3


def test_add_lr_degrades_to_the_output_size() -> None:
    torch.manual_seed(0)
    image = torch.rand(32, 32, 3) * 2 - 1
    sample = AddLR(factor=4, output_size=16, image_key="jpg")({"jpg": image})
    assert sample["lr"].shape == (16, 16, 3) and sample["lr"].min() >= -1 and sample["lr"].max() <= 1
    assert sample["jpg"] is image
