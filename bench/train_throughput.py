"""Training throughput of the demo stage-2 config (``configs/demo/txt2img_ldm.yaml``: text-to-image LDM on 8x8x4
latents of a random-weight first stage, batch 64 of captioned shapes), through a Lightning ``Trainer`` as
``main.py`` trains it: steps/s and images/s over the steps after a warm-up."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from bench.common import Row
from ldm.data.shapes import ShapesDataset
from ldm.util import instantiate_from_config

DEMO_CONFIG = "configs/demo/txt2img_ldm.yaml"


class _StepTimer(pl.Callback):
    """Wall time of the training steps after the first ``warmup``."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.steps = warmup, 0.0, 0

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step > self.warmup:
            self.steps = trainer.global_step - self.warmup
            self.seconds = time.perf_counter() - self.start


def run(steps: int = 10, warmup: int = 3, seed: int = 4) -> list[Row]:
    config = OmegaConf.load(DEMO_CONFIG)  # as written: its first-stage ckpt_path is ??? until set here
    config.model.params.first_stage_config.params.ckpt_path = None
    torch.manual_seed(seed)
    model = instantiate_from_config(config.model)
    batch_size = config.data.params.batch_size
    model.learning_rate = batch_size * config.model.base_learning_rate
    data = DataLoader(ShapesDataset(size=32, length=batch_size * (steps + warmup), split="train"),
                      batch_size=batch_size, num_workers=0)
    timer = _StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps + warmup, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
    )
    trainer.fit(model, train_dataloaders=data)
    per_step = timer.seconds / timer.steps
    return [Row(f"train demo txt2img LDM, batch {batch_size} (s/step)", per_step,
                note=f"{1 / per_step:.2f} steps/s, {batch_size / per_step:.0f} images/s")]
