"""A tiny LightningModule for the training-entrypoint tests (``target: tests.toy_model.ToyAutoencoder``)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class InverseDecay:
    """``lr_lambda(step) = 1 / (1 + rate * step)`` as a numpy float, like the original LDM schedulers."""

    def __init__(self, rate: float = 0.1):
        self.rate = rate

    def __call__(self, step: int) -> np.float64:
        return np.float64(1.0) / (1.0 + self.rate * step)


class ToyAutoencoder(pl.LightningModule):
    """1x1-conv autoencoder on ``batch[image_key]`` ``(B, H, W, C)`` with an MSE loss, Adam and a step schedule.

    ``extra`` (any config) is stored in the hyper-parameters, so checkpoints carry OmegaConf nodes unless
    they are converted; ``step_delay`` slows each step down for the signal tests.
    """

    def __init__(
        self, channels: int = 3, monitor: str | None = "val/loss", image_key: str = "image",
        step_delay: float = 0.0, extra: Any = None, fail_at_step: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Conv2d(channels, 4, 1)
        self.decoder = nn.Conv2d(4, channels, 1)
        self.monitor = monitor
        self.image_key = image_key
        self.step_delay = step_delay
        self.fail_at_step = fail_at_step
        self.learning_rate = 1.0e-3

    def get_input(self, batch: dict[str, Any]) -> torch.Tensor:
        return rearrange(batch[self.image_key], "b h w c -> b c h w").float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.tanh(self.encoder(x)))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.fail_at_step is not None and self.global_step >= self.fail_at_step:
            raise RuntimeError(f"toy failure at step {self.global_step}")
        x = self.get_input(batch)
        loss = F.mse_loss(self(x), x)
        self.log("train/loss", loss)
        if self.step_delay:
            time.sleep(self.step_delay)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = self.get_input(batch)
        self.log("val/loss", F.mse_loss(self(x), x))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = self.get_input(batch)
        self.log("test/loss", F.mse_loss(self(x), x))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=InverseDecay())
        return [optimizer], [{"scheduler": scheduler, "interval": "step", "frequency": 1}]

    @torch.no_grad()
    def log_images(self, batch: dict[str, Any], split: str = "train", **kwargs: Any) -> dict[str, torch.Tensor]:
        x = self.get_input(batch)
        return {"inputs": x, "reconstructions": self(x)}
