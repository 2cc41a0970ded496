"""``main.py --scale_lr``: lr = accumulate_grad_batches × devices × num_nodes × batch_size × base_learning_rate, with
every factor read from the merged config (YAML or command line), as the Trainer ends up using it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

import main

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests" / "configs" / "toy_autoencoder.yaml")


def build(tmp_path: Path, *extra: str):
    """``main.build`` of the toy config on a one-image folder; returns ``(model, trainer)``."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(images / "a.png")
    argv = ["-b", TOY, "-l", str(tmp_path / "logs"), f"data.params.train.params.root={images}",
            f"data.params.validation.params.root={images}", *extra]
    opt, unknown = main.get_parser().parse_known_args(argv)
    cli = {k: v for k, v in vars(opt).items() if k in main.trainer_arg_names()}
    _, model, _, trainer = main.build(opt, cli, unknown)
    return model, trainer


def test_nodes_and_devices_from_the_config_multiply_the_rate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    model, trainer = build(tmp_path, "lightning.trainer.num_nodes=2", "lightning.trainer.devices=3",
                           "lightning.trainer.strategy=ddp", "lightning.trainer.accumulate_grad_batches=5",
                           "data.params.batch_size=7")
    assert (trainer.num_nodes, trainer.num_devices, trainer.accumulate_grad_batches) == (2, 3, 5)
    assert model.learning_rate == pytest.approx(5 * 3 * 2 * 7 * 1.0e-3)
    assert ("Setting learning rate to 2.10e-01 = 5 (accumulate_grad_batches) * 3 (num_devices) * 2 (num_nodes) * "
            "7 (batchsize) * 1.00e-03 (base_lr)") in caplog.text


def test_a_single_process_run_uses_batch_size_times_base(tmp_path: Path) -> None:
    model, trainer = build(tmp_path)
    assert (trainer.num_nodes, trainer.num_devices, trainer.accumulate_grad_batches) == (1, 1, 1)
    assert model.learning_rate == pytest.approx(2 * 1.0e-3)


def test_without_scaling_the_base_rate_is_the_rate(tmp_path: Path) -> None:
    model, _ = build(tmp_path, "--scale_lr", "false", "lightning.trainer.num_nodes=2", "--devices", "2",
                     "--strategy", "ddp")
    assert model.learning_rate == pytest.approx(1.0e-3)


@pytest.mark.parametrize("name", ["v1-finetune.yaml", "v2-finetune-v.yaml"])
def test_the_finetune_configs_reach_1e_5_at_global_batch_32(name: str) -> None:
    """The arithmetic their comments state: one GPU with their accumulation, and 8 GPUs with less."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(ROOT / "configs" / "stable-diffusion" / name)
    batch, accumulate = config.data.params.batch_size, config.lightning.trainer.accumulate_grad_batches
    base = config.model.base_learning_rate
    assert batch * accumulate == 32
    assert accumulate * 1 * 1 * batch * base == pytest.approx(1.0e-5)
    assert (accumulate // 8) * 8 * 1 * batch * base == pytest.approx(1.0e-5)
