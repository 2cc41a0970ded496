"""A run stopped by SIGTERM at step k and resumed with ``-r`` equals the uninterrupted run at every later step, bit for
bit (weights and optimizer state), on the CPU; without the random-number state in the checkpoint it does not.

The data are shuffled and randomly cropped and flipped, and the model draws noise from torch, numpy and Python's
``random`` in every step, so every generator the checkpoint carries matters.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image

import main
from ldm.callbacks import AtomicCheckpointIO, rng_restore, rng_snapshot
from ldm.checkpoint import load_checkpoint
from ldm.cli.resumable_data import ResumableLoader, SeededItems
from ldm.modules.ema import LitEma
from tests.toy_model import ToyAutoencoder

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests" / "configs" / "toy_autoencoder.yaml")
STEPS, KILL_AT = 10, 5  # 8 images, batch 2: 4 batches an epoch, so the kill falls mid-epoch
RNG_KEY = "RNGStateCallback"


class NoisyToy(ToyAutoencoder):
    """The toy autoencoder denoising an input perturbed with noise from all three global generators, with EMA
    weights updated in ``on_train_batch_end`` as the package's models do."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.use_ema = True
        self.model_ema = LitEma(self)

    def on_train_batch_end(self, *args: Any) -> None:
        self.model_ema(self)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x = self.get_input(batch)
        noise = 0.1 * torch.randn_like(x) + 0.05 * float(np.random.standard_normal()) + 0.05 * random.gauss(0, 1)
        loss = F.mse_loss(self(x + noise), x)
        self.log("train/loss", loss)
        return loss


class SigtermAt(pl.Callback):
    """Sends this process SIGTERM after global step ``step`` (as a cluster scheduler would)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def make_images(folder: Path, count: int = 8) -> Path:
    rng = np.random.default_rng(1)
    for index in range(count):
        target = folder / f"{index}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 13, 3), dtype=np.uint8)).save(target)
    return folder


def run_args(images: Path, logs: Path, kill_at: int, *extra: str) -> list[str]:
    return [
        "-b", TOY, "-l", str(logs), "-t", "--enable_progress_bar", "false", "-n", "run",
        f"data.params.train.params.root={images}", f"data.params.validation.params.root={images}",
        "data.params.train.params.flip_p=0.5", "data.params.train.params.random_crop=true",
        "model.target=tests.test_resume_exact.NoisyToy", "model.params.monitor=null",
        "lightning.modelcheckpoint.params.every_n_train_steps=1", "lightning.modelcheckpoint.params.save_top_k=-1",
        "lightning.modelcheckpoint.params.filename='{step:03}'",
        "lightning.callbacks.image_logger.params.disabled=true",
        "lightning.callbacks.stop.target=tests.test_resume_exact.SigtermAt",
        f"lightning.callbacks.stop.params.step={kill_at}", *extra,
    ]


def logdir_of(logs: Path) -> Path:
    (logdir,) = logs.iterdir()
    return logdir


def resume(logdir: Path) -> int:
    return main.main(["-r", str(logdir), "--trust-config", "-t", "--max_steps", str(STEPS),
                      "--enable_progress_bar", "false", "lightning.callbacks.stop.params.step=-1"])


def load(logdir: Path, step: int) -> dict[str, Any]:
    return torch.load(logdir / "checkpoints" / f"step={step:03}.ckpt", weights_only=True)


def tensors_of(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every weight and every optimizer-state tensor, by name."""
    found = {f"weights/{k}": v for k, v in checkpoint["state_dict"].items()}
    for index, optimizer in enumerate(checkpoint["optimizer_states"]):
        for param, state in optimizer["state"].items():
            found.update({f"optimizer{index}/{param}/{k}": torch.as_tensor(v) for k, v in state.items()})
    return found


def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    first, second = tensors_of(a), tensors_of(b)
    assert first.keys() == second.keys()
    return [name for name in first if not torch.equal(first[name], second[name])]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], dict[str, Path]]:
    """``runs(workers)``: the uninterrupted run, the killed run's logdir and a pristine copy of it (made once)."""
    made: dict[int, dict[str, Path]] = {}

    def make(workers: int) -> dict[str, Path]:
        if workers not in made:
            tmp = tmp_path_factory.mktemp(f"workers{workers}")
            images = make_images(tmp / "images")
            extra = ("--max_steps", str(STEPS), f"data.params.num_workers={workers}")
            assert main.main(run_args(images, tmp / "whole", -1, *extra)) == 0
            assert main.main(run_args(images, tmp / "killed", KILL_AT, *extra)) == 143
            killed = logdir_of(tmp / "killed")
            assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == KILL_AT
            shutil.copytree(killed, tmp / "pristine" / killed.name)
            made[workers] = {"whole": logdir_of(tmp / "whole"), "killed": killed, "pristine": tmp / "pristine",
                             "tmp": tmp}
        return made[workers]

    return make


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_run_equals_the_uninterrupted_run_bit_for_bit(runs: Callable, workers: int) -> None:
    """Killed by SIGTERM mid-epoch (exit 143, last.ckpt written), resumed with -r: every later step is equal, with
    the examples loaded in the main process or by two worker processes."""
    whole, killed = runs(workers)["whole"], runs(workers)["killed"]
    assert not differing(load(whole, KILL_AT), load(killed, KILL_AT))
    assert resume(killed) == 0
    for step in range(KILL_AT + 1, STEPS + 1):
        assert not differing(load(whole, step), load(killed, step)), f"step {step}"
    final = load(whole, STEPS)
    assert final["global_step"] == STEPS and differing(load(whole, KILL_AT), final)  # it did train after the kill


def test_stopping_at_max_steps_and_continuing_to_more_steps_is_bit_exact(runs: Callable, tmp_path: Path) -> None:
    """``--max_steps 5``, then ``-r --max_steps 10``: the same as one 10-step run."""
    images = make_images(tmp_path / "images")
    assert main.main(run_args(images, tmp_path / "logs", -1, "--max_steps", str(KILL_AT))) == 0
    assert resume(logdir_of(tmp_path / "logs")) == 0
    for step in range(KILL_AT + 1, STEPS + 1):
        assert not differing(load(runs(0)["whole"], step), load(logdir_of(tmp_path / "logs"), step)), f"step {step}"


def test_resume_from_an_epoch_end_step_checkpoint_is_bit_exact(runs: Callable, tmp_path: Path) -> None:
    """``-r <logdir>/checkpoints/step=004.ckpt``: written by ModelCheckpoint at the last batch of an epoch, before
    the module's on_train_batch_end (its EMA update), which the resume makes up for."""
    copy = tmp_path / runs(0)["whole"].name
    shutil.copytree(runs(0)["whole"], copy)
    for step in range(4 + 1, STEPS + 1):
        (copy / "checkpoints" / f"step={step:03}.ckpt").unlink()
    assert main.main(["-r", str(copy / "checkpoints" / "step=004.ckpt"), "--trust-config", "-t",
                      "--max_steps", str(STEPS), "--enable_progress_bar", "false"]) == 0
    for step in range(4 + 1, STEPS + 1):
        assert not differing(load(runs(0)["whole"], step), load(copy, step)), f"step {step}"


def strip(checkpoint: dict[str, Any], what: str) -> None:
    """Remove the global generators' states (``rng``) or the train loader's position (``loader``)."""
    if what == "rng":
        del checkpoint["callbacks"][RNG_KEY]
    else:
        del checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]


@pytest.mark.parametrize("removed", [("rng",), ("loader",), ("rng", "loader")])
def test_without_the_random_state_the_resumed_run_differs(runs: Callable, removed: tuple[str, ...]) -> None:
    """The tests above can fail: with either part of the state removed from the checkpoint, the weights differ."""
    copy = runs(0)["tmp"] / ("stripped-" + "-".join(removed))
    shutil.copytree(runs(0)["pristine"], copy)
    logdir = logdir_of(copy)
    last = logdir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert RNG_KEY in checkpoint["callbacks"] and "combined_loader" in checkpoint["loops"]["fit_loop"]["state_dict"]
    for what in removed:
        strip(checkpoint, what)
    torch.save(checkpoint, last)
    assert resume(logdir) == 0
    assert differing(load(runs(0)["whole"], STEPS), load(logdir, STEPS))


def test_latent_diffusion_resumes_bit_for_bit(tmp_path: Path) -> None:
    """The tiny class-conditional LatentDiffusion (noise and timesteps drawn every step, EMA weights), resumed from
    the step-2 checkpoint of a 4-step run, ends equal to that run."""
    images = make_images(tmp_path / "images", count=4)
    logs = tmp_path / "logs"
    assert main.main([
        "-b", str(ROOT / "tests" / "configs" / "tiny_ldm.yaml"), "-l", str(logs), "-t", "--max_steps", "4",
        "--limit_val_batches", "0", "--enable_progress_bar", "false",
        f"data.params.train.params.root={images}", f"data.params.validation.params.root={images}",
        "data.params.train.params.random_crop=true", "model.params.first_stage_config.params.ckpt_path=null",
        "model.params.monitor=null", "lightning.modelcheckpoint.params.every_n_train_steps=1",
        "lightning.modelcheckpoint.params.save_top_k=-1", "lightning.modelcheckpoint.params.filename='{step:03}'",
        "lightning.callbacks.image_logger.params.disabled=true"]) == 0
    whole = logdir_of(logs)
    copy = tmp_path / "copy" / whole.name
    shutil.copytree(whole, copy)
    for step in (3, 4):
        (copy / "checkpoints" / f"step={step:03}.ckpt").unlink()
    assert main.main(["-r", str(copy / "checkpoints" / "step=002.ckpt"), "--trust-config", "-t", "--max_steps", "4",
                      "--enable_progress_bar", "false"]) == 0
    for step in (3, 4):
        assert not differing(load(whole, step), load(copy, step)), f"step {step}"
    assert any(k.startswith("model_ema.") for k in load(copy, 4)["state_dict"])


def test_rng_snapshot_survives_the_safe_loader_and_restores_every_stream(tmp_path: Path) -> None:
    """Python's ``random`` (with its Gaussian cache), numpy's legacy generator (with its own) and torch's CPU
    generator continue exactly where the snapshot was taken, after a save and a safe load."""
    random.gauss(0, 1)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    AtomicCheckpointIO().save_checkpoint({"rng": rng_snapshot()}, tmp_path / "rng.ckpt")
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    rng_restore(load_checkpoint(tmp_path / "rng.ckpt")["rng"])
    assert (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == (
        expected)


class ThreeDraws(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seeded_items_depend_on_their_seed_only_and_leave_the_callers_generators_alone() -> None:
    items = SeededItems(ThreeDraws())
    snapshot = rng_snapshot()
    first = items[(3, 99)]
    after = (random.random(), float(np.random.rand()), float(torch.rand(())))
    rng_restore(snapshot)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == after  # nothing was consumed
    torch.manual_seed(1234)
    np.random.seed(5)
    assert items[(3, 99)] == first and items[(3, 100)] != first
    assert len(set(items[(3, 99)])) == 3  # three independent draws, not one seed reused


@pytest.mark.parametrize(("strategy", "resumable"), [("auto", True), ("ddp", False)])
def test_only_single_device_runs_get_the_resumable_loader(tmp_path: Path, strategy: str, resumable: bool) -> None:
    """A parallel strategy keeps Lightning's distributed sampler (which would replace the resumable order)."""
    argv = [*run_args(make_images(tmp_path / "images"), tmp_path / "logs", -1), "--strategy", strategy,
            "--devices", "1"]
    opt, unknown = main.get_parser().parse_known_args(argv)
    _, _, data, _ = main.build(opt, {k: v for k, v in vars(opt).items() if k in main.trainer_arg_names()}, unknown)
    data.setup("fit")
    assert isinstance(data.train_dataloader(), ResumableLoader) == resumable
