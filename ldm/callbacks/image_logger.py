"""``ImageLogger``: calls ``pl_module.log_images(batch, split=...)`` at chosen steps and writes PNG grids.

Files go to ``<save_dir>/images/<split>/{k}_gs-{global_step:06}_e-{epoch:06}_b-{batch_idx:06}.png``
(``save_dir`` is the logger's, i.e. the run's logdir) and, with a TensorBoard logger, to ``add_image`` (8 per
row).
``global_step`` is Lightning 2's: the number of optimizer steps taken, so the first batch logs as 1.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from ldm.callbacks.checkpointing import atomic_file
from ldm.image_io import make_grid


class ImageLogger(Callback):
    """Log ``pl_module.log_images`` outputs every ``batch_frequency`` steps.

    With ``increase_log_steps`` it also logs at the powers of two below ``batch_frequency`` (1, 2, 4, ...).
    The step checked is ``global_step``, or ``batch_idx`` with ``log_on_batch_idx``; step 0 only with
    ``log_first_step``. Images are cut to ``max_images``, clamped to [-1, 1] with ``clamp`` and mapped to
    [0, 1] with ``rescale``; ``log_images_kwargs`` are passed to ``log_images``.
    """

    def __init__(
        self,
        batch_frequency: int,
        max_images: int,
        clamp: bool = True,
        increase_log_steps: bool = True,
        rescale: bool = True,
        disabled: bool = False,
        log_on_batch_idx: bool = False,
        log_first_step: bool = False,
        log_images_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        if batch_frequency < 1:
            raise ValueError(f"ImageLogger: batch_frequency must be >= 1, got {batch_frequency}.")
        self.batch_freq, self.max_images = batch_frequency, max_images
        self.clamp, self.rescale, self.disabled = clamp, rescale, disabled
        self.log_on_batch_idx, self.log_first_step = log_on_batch_idx, log_first_step
        self.log_images_kwargs = dict(log_images_kwargs or {})
        # Early steps logged before the first multiple of batch_frequency: the powers of two up to it.
        powers = [1 << k for k in range(int(batch_frequency).bit_length())]
        self.log_steps = powers if increase_log_steps else [batch_frequency]

    def check_frequency(self, check_idx: int) -> bool:
        """True when ``check_idx`` is a multiple of ``batch_frequency`` or in ``log_steps`` (and > 0 unless
        ``log_first_step``). Each True drops the first pending early step, so with ``log_first_step`` step 0
        uses up step 1."""
        due = check_idx % self.batch_freq == 0 or check_idx in self.log_steps
        if not due or (check_idx <= 0 and not self.log_first_step):
            return False
        if self.log_steps:
            self.log_steps.pop(0)
        return True

    @rank_zero_only
    def log_local(
        self, save_dir: str, split: str, images: dict[str, torch.Tensor], global_step: int, current_epoch: int,
        batch_idx: int,
    ) -> None:
        root = os.path.join(save_dir, "images", split)
        os.makedirs(root, exist_ok=True)
        for key, batch in images.items():
            grid = make_grid(batch, nrow=4)
            if self.rescale:
                grid = (grid + 1.0) / 2.0
            array = (grid.permute(1, 2, 0).float().numpy() * 255).clip(0, 255).astype(np.uint8)
            filename = f"{key}_gs-{global_step:06}_e-{current_epoch:06}_b-{batch_idx:06}.png"
            with atomic_file(os.path.join(root, filename)) as handle:  # a full disk leaves no truncated PNG
                Image.fromarray(array).save(handle, format="PNG")

    @rank_zero_only
    def log_to_logger(self, trainer: pl.Trainer, images: dict[str, torch.Tensor], split: str) -> None:
        if not isinstance(trainer.logger, TensorBoardLogger):
            return
        for key, batch in images.items():
            grid = (make_grid(batch, nrow=8) + 1.0) / 2.0
            trainer.logger.experiment.add_image(f"{split}/{key}", grid, global_step=trainer.global_step)

    def log_img(self, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: str = "train") -> None:
        trainer = pl_module.trainer
        check_idx = batch_idx if self.log_on_batch_idx else pl_module.global_step
        if not self.check_frequency(check_idx):
            return
        if not (callable(getattr(pl_module, "log_images", None)) and self.max_images > 0):
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            logged = pl_module.log_images(batch, split=split, **self.log_images_kwargs)
        if was_training:
            pl_module.train()
        images = {}
        for key, value in logged.items():
            if not isinstance(value, torch.Tensor):
                continue
            value = (value[None] if value.ndim == 3 else value)[: self.max_images].detach().float().cpu()
            images[key] = value.clamp(-1.0, 1.0) if self.clamp else value
        save_dir = getattr(trainer.logger, "save_dir", None) or trainer.default_root_dir
        self.log_local(save_dir, split, images, pl_module.global_step, pl_module.current_epoch, batch_idx)
        self.log_to_logger(trainer, images, split)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.disabled and (pl_module.global_step > 0 or self.log_first_step):
            self.log_img(pl_module, batch, batch_idx, split="train")

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.disabled and pl_module.global_step > 0:
            self.log_img(pl_module, batch, batch_idx, split="val")
