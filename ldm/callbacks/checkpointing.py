"""Checkpoint writes that survive a kill at any moment, safe reads, and ``last.ckpt`` on SIGUSR1 or a failed fit.

Every write goes to a temporary file in the destination folder, is fsync'ed, then ``os.replace``'d over
the target (atomic on POSIX), so a reader sees either the old or the new complete file; a write that fails (a full
disk) raises :class:`CheckpointWriteError` and leaves the previous file as it was. Checkpoints are stored with
plain containers only (OmegaConf nodes and numpy scalars converted), and Lightning reads them back through
:func:`ldm.checkpoint.load_checkpoint` (allow-listed unpickling: nothing in the file can run code).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
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

from ldm.atomic_write import atomic_file
from ldm.checkpoint import load_checkpoint
from ldm.cli.early_signals import take_checkpoint_request

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


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, read-only folder); the previous file is intact."""


#: ``<folder>/.<name>.<random>.tmp``: what :func:`atomic_file` writes before the rename.
TEMP_PATTERN = ".*.tmp"


def remove_stale_temp_files(folder: _PATH) -> list[Path]:
    """Delete the temporary files that checkpoint writes killed mid-way left in ``folder`` (recursively); returns
    them. Only this module's names match: a dot, a checkpoint's name, a random part, ``.tmp``."""
    removed = []
    for path in Path(folder).rglob(TEMP_PATTERN):
        if path.is_file() and ".ckpt." in path.name:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) of interrupted checkpoint writes in %s", len(removed), folder)
    return removed


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_file`."""
    with atomic_file(path) as handle:
        torch.save(obj, handle)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO (``Trainer(plugins=[AtomicCheckpointIO()])``) whose every save is atomic and every
    load goes through :func:`ldm.checkpoint.load_checkpoint` (never ``torch.load(weights_only=False)``).

    :meth:`preload` hands it a checkpoint already read (and checked) for a path, which the next load of that path
    returns instead of reading the file again.
    """

    def __init__(self) -> None:
        super().__init__()
        self._preloaded: dict[str, dict[str, Any]] = {}

    def preload(self, path: _PATH, checkpoint: dict[str, Any]) -> None:
        self._preloaded[os.fspath(path)] = checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}.")
        checkpoint = dict(to_safe_types(checkpoint))
        for key in HPARAMS_TYPE_KEYS:
            if key in checkpoint and not isinstance(checkpoint[key], str):
                checkpoint.pop(key)
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as error:
            failure = CheckpointWriteError(
                f"cannot write checkpoint {path}: {error.strerror or error}; the previous file, if any, is unchanged"
            )
            failure.errno = error.errno
            raise failure from error

    def load_checkpoint(self, path: _PATH, map_location: Any = None, weights_only: bool | None = None) -> dict:
        """The checkpoint at ``path`` on the CPU, read safely (``map_location`` and ``weights_only`` are ignored:
        tensors stay on the CPU and nothing but allow-listed types is ever unpickled)."""
        preloaded = self._preloaded.pop(os.fspath(path), None)
        return preloaded if preloaded is not None else load_checkpoint(path)


def save_last_checkpoint(trainer: pl.Trainer, path: _PATH) -> None:
    """Write the full training state to ``path`` from rank 0, without a barrier (safe from one rank alone)."""
    checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
    trainer.strategy.save_checkpoint(checkpoint, path)
    if trainer.is_global_zero:
        logger.info("Summoned checkpoint at global step %d: %s", trainer.global_step, path)


def mid_accumulation(trainer: pl.Trainer, pl_module: pl.LightningModule, batch_idx: int) -> bool:
    """Whether batch ``batch_idx`` left gradients that wait for the next batches of its accumulation window (a
    checkpoint written now would lose them). The window is the Trainer's ``accumulate_grad_batches``, or the
    module's own for modules that optimise manually."""
    if pl_module.automatic_optimization:
        window = trainer.accumulate_grad_batches
    else:
        window = getattr(pl_module, "accumulate_grad_batches", 1)
    return (batch_idx + 1) % max(1, int(window)) != 0 and not trainer.is_last_batch


class SignalCheckpoint(Callback):
    """Writes ``<ckptdir>/last.ckpt`` after SIGUSR1 (at the next batch end) and when fitting fails or is stopped
    by SIGTERM.

    The signal handler only sets a flag; the checkpoint is written between batches, where the model and
    optimizer state are consistent, at the end of a gradient-accumulation window. A SIGUSR1 that arrived during
    start-up (see :mod:`ldm.cli.early_signals`) is honoured at the first such point. A failure before the first
    optimizer step writes nothing, so a failed start can never overwrite a good ``last.ckpt``; a failure to write
    it (a full disk) is logged and leaves the previous file. Stale temporary files of writes killed mid-way are
    removed when fitting starts.
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
        if stage != TrainerFn.FITTING:
            return
        if trainer.is_global_zero and os.path.isdir(os.path.dirname(self.path)):
            remove_stale_temp_files(os.path.dirname(self.path))
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(self.signum, self._request)
            self.requested = self.requested or take_checkpoint_request()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    def _save_if_requested(self, trainer: pl.Trainer) -> None:
        if self.requested:
            self.requested = False
            save_last_checkpoint(trainer, self.path)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not mid_accumulation(trainer, pl_module, batch_idx):
            self._save_if_requested(trainer)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._save_if_requested(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.global_step == 0:
            return
        if isinstance(exception, CheckpointWriteError):  # the disk refused the last write: keep its previous file
            return
        try:
            save_last_checkpoint(trainer, self.path)
        except Exception as error:  # the fit's own exception is the one to report
            logger.warning("could not write %s after the failure: %s", self.path, error)
