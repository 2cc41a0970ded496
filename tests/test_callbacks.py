"""Callbacks and checkpoint IO: ImageLogger steps and grids, atomic writes, SIGUSR1 / failure checkpoints."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from torch.utils.data import DataLoader

from ldm.callbacks import (
    AtomicCheckpointIO,
    ImageLogger,
    SetupCallback,
    SignalCheckpoint,
    checkpointing,
    make_grid,
    to_safe_types,
)
from tests.toy_model import ToyAutoencoder


class Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        return {"image": np.full((8, 8, 3), idx / 8.0 - 0.5, dtype=np.float32)}


def trainer(tmp_path: Path, callbacks: list, max_steps: int, logger: Logger | None = None) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=logger or CSVLogger(str(tmp_path), name="csv"),
        callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        plugins=[AtomicCheckpointIO()], default_root_dir=str(tmp_path), limit_val_batches=0,
    )


def loader() -> DataLoader:
    return DataLoader(Images(), batch_size=2)


# ----------------------------------------------------------------------------------------------------------------
# ImageLogger


def test_make_grid_layout() -> None:
    images = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 3, 2, 3) + 1
    grid = make_grid(images, nrow=4, padding=2)
    assert grid.shape == (3, 2 * (2 + 2) + 2, 4 * (3 + 2) + 2)
    assert grid[0, 2, 2] == 1 and grid[0, 2, 7] == 2 and grid[0, 6, 2] == 5
    assert grid[0, 0].abs().sum() == 0 and grid[0, 6, 7] == 0
    assert torch.equal(make_grid(images[:1]), images[0])


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"batch_frequency": 8}, [1, 2, 4, 8, 16]),
        ({"batch_frequency": 8, "increase_log_steps": False}, [8, 16]),
        # as the original: each logged step pops the *first* pending early step, so step 0 uses up step 1
        ({"batch_frequency": 8, "log_first_step": True}, [0, 2, 4, 8, 16]),
        ({"batch_frequency": 6}, [1, 2, 4, 6, 12, 18]),
    ],
)
def test_image_logger_frequency(kwargs: dict, expected: list[int]) -> None:
    logger = ImageLogger(max_images=4, **kwargs)
    assert [step for step in range(20) if logger.check_frequency(step)] == expected


def test_image_logger_checks_the_step_before_looking_for_log_images() -> None:
    """The original evaluates check_frequency first, so a module without log_images still uses up early steps."""

    class NoLogImages(torch.nn.Module):
        global_step = 1
        trainer = None

    image_logger = ImageLogger(batch_frequency=4, max_images=2)
    image_logger.log_img(NoLogImages(), batch=None, batch_idx=0)
    assert image_logger.log_steps == [2, 4]


def test_make_grid_defaults_to_eight_per_row_as_torchvision() -> None:
    assert make_grid(torch.zeros(9, 3, 2, 2)).shape == (3, 2 * 4 + 2, 8 * 4 + 2)


def test_image_logger_writes_png_grids_at_the_right_steps(tmp_path: Path) -> None:
    pl.seed_everything(0)
    image_logger = ImageLogger(batch_frequency=4, max_images=2, clamp=True)
    trainer(tmp_path, [image_logger], max_steps=5).fit(ToyAutoencoder(monitor=None), loader())
    names = sorted(p.name for p in (tmp_path / "images" / "train").iterdir())
    expected = [f"{key}_gs-{step:06}_e-000000_b-{step - 1:06}.png" for key in ("inputs", "reconstructions")
                for step in (1, 2, 4)]
    assert names == sorted(expected)
    grid = np.asarray(Image.open(tmp_path / "images" / "train" / "inputs_gs-000004_e-000000_b-000003.png"))
    assert grid.shape == (12, 22, 3)
    first, second = Images()[6]["image"][0, 0, 0], Images()[7]["image"][0, 0, 0]
    assert grid[2, 2, 0] == int((first + 1) / 2 * 255) and grid[2, 12, 0] == int((second + 1) / 2 * 255)


def test_image_logger_adds_images_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    image_logger = ImageLogger(batch_frequency=2, max_images=2, increase_log_steps=False)
    trainer(tmp_path, [image_logger], max_steps=2, logger=logger).fit(ToyAutoencoder(monitor=None), loader())
    events = EventAccumulator(logger.log_dir).Reload()
    assert {"train/inputs", "train/reconstructions"} <= set(events.Tags()["images"])
    (image,) = events.Images("train/inputs")
    assert image.step == 2 and (image.width, image.height) == (22, 12)


# ----------------------------------------------------------------------------------------------------------------
# checkpoint IO


def test_to_safe_types_converts_configs_and_numpy_and_keeps_state_dicts() -> None:
    state = torch.nn.Linear(2, 2).state_dict()
    checkpoint = {"state_dict": state, "hp": {"cfg": OmegaConf.create({"a": [1, {"b": 2}]}), "lr": np.float64(0.5)}}
    safe = to_safe_types(checkpoint)
    assert safe["state_dict"] is state
    assert safe["hp"] == {"cfg": {"a": [1, {"b": 2}]}, "lr": 0.5} and type(safe["hp"]["lr"]) is float


def test_atomic_checkpoint_io_loads_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "ckpts" / "x.ckpt"
    AtomicCheckpointIO().save_checkpoint(
        {"hyper_parameters": {"cfg": OmegaConf.create({"a": 1})}, "hparams_type": OmegaConf.create().__class__,
         "w": torch.ones(2)}, path,
    )
    loaded = torch.load(path, weights_only=True)
    assert loaded["hyper_parameters"] == {"cfg": {"a": 1}} and "hparams_type" not in loaded
    assert os.listdir(path.parent) == ["x.ckpt"]


def test_interrupted_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def dies_halfway(obj, handle) -> None:
        handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.ckpt"]


# ----------------------------------------------------------------------------------------------------------------
# SIGUSR1 and failures


class SendSignalAt(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_sigusr1_writes_last_ckpt_at_the_next_batch_end(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    callback = SignalCheckpoint(str(tmp_path / "checkpoints"))
    trainer(tmp_path, [SendSignalAt(2), callback], max_steps=4).fit(ToyAutoencoder(monitor=None), loader())
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 and "optimizer_states" in checkpoint
    assert signal.getsignal(signal.SIGUSR1) == before


@pytest.mark.parametrize(("fail_at", "written"), [(3, True), (0, False)])
def test_exception_during_fit_writes_last_ckpt_once_training_started(tmp_path: Path, fail_at: int, written: bool):
    model = ToyAutoencoder(monitor=None, fail_at_step=fail_at)
    with pytest.raises(RuntimeError, match="toy failure"):
        trainer(tmp_path, [SignalCheckpoint(str(tmp_path / "checkpoints"))], max_steps=6).fit(model, loader())
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.exists() == written
    if written:
        assert torch.load(last, weights_only=True)["global_step"] == 3


def test_setup_callback_writes_dirs_and_configs(tmp_path: Path) -> None:
    logdir = tmp_path / "run"
    callback = SetupCallback(
        resume="", now="NOW", logdir=str(logdir), ckptdir=str(logdir / "checkpoints"), cfgdir=str(logdir / "configs"),
        config=OmegaConf.create({"model": {"target": "x"}}),
        lightning_config=OmegaConf.create({"trainer": {"max_steps": 1}, "callbacks": {
            "metrics_over_trainsteps_checkpoint": {"params": {"every_n_train_steps": 1}}}}),
    )
    trainer(tmp_path, [callback], max_steps=1).fit(ToyAutoencoder(monitor=None), loader())
    assert OmegaConf.load(logdir / "configs" / "NOW-project.yaml") == {"model": {"target": "x"}}
    assert OmegaConf.load(logdir / "configs" / "NOW-lightning.yaml").lightning.trainer.max_steps == 1
    assert (logdir / "checkpoints" / "trainstep_checkpoints").is_dir()


def test_callback_signatures_match_the_original() -> None:
    import inspect

    assert list(inspect.signature(SetupCallback).parameters) == [
        "resume", "now", "logdir", "ckptdir", "cfgdir", "config", "lightning_config"]
    defaults = {k: p.default for k, p in inspect.signature(ImageLogger).parameters.items()}
    assert defaults == {
        "batch_frequency": inspect.Parameter.empty, "max_images": inspect.Parameter.empty, "clamp": True,
        "increase_log_steps": True, "rescale": True, "disabled": False, "log_on_batch_idx": False,
        "log_first_step": False, "log_images_kwargs": None}
