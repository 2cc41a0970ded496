"""``CUDACallback``: per-epoch wall time and peak GPU memory, averaged over ranks (no-op off CUDA)."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info


class CUDACallback(Callback):
    """Logs ``Average Epoch time`` (s) and ``Average Peak memory`` (MiB) at the end of each training epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.start_time = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = trainer.strategy.root_device
        if device.type != "cuda":
            return
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
        self.start_time = time.time()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = trainer.strategy.root_device
        if device.type != "cuda":
            return
        torch.cuda.synchronize(device)
        stats = torch.tensor(
            [torch.cuda.max_memory_allocated(device) / 2**20, time.time() - self.start_time], device=device
        )
        max_memory, epoch_time = trainer.strategy.reduce(stats, reduce_op="mean").tolist()
        rank_zero_info(f"Average Epoch time: {epoch_time:.2f} seconds")
        rank_zero_info(f"Average Peak memory {max_memory:.2f}MiB")
