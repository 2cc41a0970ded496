"""Checkpoint writes that survive a kill at any moment, and ``last.ckpt`` on SIGUSR1 or a failed fit.

Every write goes to a temporary file in the destination folder, is fsync'ed, then ``os.replace``'d over
the target (atomic on POSIX), so a reader sees either the old or the new complete file. Checkpoints are
stored with plain containers only (OmegaConf nodes and numpy scalars converted), so Lightning's
``fit(ckpt_path=...)`` can read them back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.types import _PATH
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.trainer.states import TrainerFn

logger = logging.getLogger(__name__)

#: Checkpoint keys Lightning fills with the hyper-parameters' class (an OmegaConf class when they are a config).
HPARAMS_TYPE_KEYS = (
    pl.LightningModule.CHECKPOINT_HYPER_PARAMS_TYPE,
    pl.LightningDataModule.CHECKPOINT_HYPER_PARAMS_TYPE,
)


def to_safe_types(obj: Any) -> Any:
    """``obj`` with OmegaConf nodes turned into dicts/lists and numpy scalars into Python numbers.

    Containers are rebuilt only where something inside changed, so state dicts (and their ``_metadata``)
    are passed through as the same objects.
    """
    if OmegaConf.is_config(obj):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        items = {key: to_safe_types(value) for key, value in obj.items()}
        if all(items[key] is obj[key] for key in items):
            return obj
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if type(obj) in (list, tuple):
        converted = [to_safe_types(value) for value in obj]
        if all(new is old for new, old in zip(converted, obj)):
            return obj
        return type(obj)(converted)
    return obj


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder, fsync and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO (``Trainer(plugins=[AtomicCheckpointIO()])``) whose every save is atomic."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}.")
        checkpoint = dict(to_safe_types(checkpoint))
        for key in HPARAMS_TYPE_KEYS:
            if key in checkpoint and not isinstance(checkpoint[key], str):
                checkpoint.pop(key)
        atomic_torch_save(checkpoint, path)


def save_last_checkpoint(trainer: pl.Trainer, path: _PATH) -> None:
    """Write the full training state to ``path`` from rank 0, without a barrier (safe from one rank alone)."""
    checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
    trainer.strategy.save_checkpoint(checkpoint, path)
    if trainer.is_global_zero:
        logger.info("Summoned checkpoint at global step %d: %s", trainer.global_step, path)


class SignalCheckpoint(Callback):
    """Writes ``<ckptdir>/last.ckpt`` after SIGUSR1 (at the next batch end) and when fitting fails.

    The signal handler only sets a flag; the checkpoint is written between batches, where the model and
    optimizer state are consistent. A failure before the first optimizer step writes nothing, so a failed
    start can never overwrite a good ``last.ckpt``.
    """

    def __init__(self, ckptdir: str, signum: int = signal.SIGUSR1):
        super().__init__()
        self.path = os.path.join(ckptdir, "last.ckpt")
        self.signum = signum
        self.requested = False
        self._previous_handler: Any = None

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(self.signum, self._request)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    def _save_if_requested(self, trainer: pl.Trainer) -> None:
        if self.requested:
            self.requested = False
            save_last_checkpoint(trainer, self.path)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._save_if_requested(trainer)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._save_if_requested(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn == TrainerFn.FITTING and trainer.global_step > 0:
            save_last_checkpoint(trainer, self.path)
