"""Every global random-number generator in a checkpoint, so that a resumed run draws what the uninterrupted run
would have drawn.

The states are stored as plain types and tensors only (a numpy key becomes an int64 tensor), so the checkpoint
still loads through the allow-listed unpickler of :mod:`ldm.checkpoint`. The data pipeline's own generators (the
shuffling order, the per-sample seeds) live with the train dataloader (:mod:`ldm.cli.resumable_data`).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn

from ldm.modules.ema import LitEma

logger = logging.getLogger(__name__)

def _numpy_snapshot() -> dict[str, Any]:
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_restore(state: dict[str, Any]) -> None:
    key = state["key"].numpy().astype(np.uint32)
    np.random.set_state((state["kind"], key, state["pos"], state["has_gauss"], state["gauss"]))


def _python_restore(state: list[Any]) -> None:
    version, words, gauss = state
    random.setstate((version, tuple(words), gauss))


def rng_snapshot() -> dict[str, Any]:
    """The state of Python's ``random``, numpy's global generator, torch's CPU generator and, once CUDA is
    initialised, every CUDA device's generator (``{"python", "numpy", "torch"[, "cuda"]}``)."""
    version, words, gauss = random.getstate()
    snapshot: dict[str, Any] = {
        "python": [version, list(words), gauss],
        "numpy": _numpy_snapshot(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        snapshot["cuda"] = torch.cuda.get_rng_state_all()
    return snapshot


def rng_restore(snapshot: dict[str, Any]) -> None:
    """Put back what :func:`rng_snapshot` took. CUDA states are restored only on a machine with the same number of
    devices (a warning says otherwise); a generator missing from ``snapshot`` is left as it is."""
    if "python" in snapshot:
        _python_restore(snapshot["python"])
    if "numpy" in snapshot:
        _numpy_restore(snapshot["numpy"])
    if "torch" in snapshot:
        torch.set_rng_state(snapshot["torch"])
    cuda = snapshot.get("cuda")
    if cuda is None:
        return
    if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    else:
        logger.warning("the checkpoint holds the RNG states of %d CUDA devices, this machine has %d: CUDA random "
                       "numbers will differ from the interrupted run", len(cuda), torch.cuda.device_count())


def keeps_ema(module: pl.LightningModule) -> bool:
    """Whether ``module`` updates a :class:`LitEma` (``model_ema``) in its ``on_train_batch_end``, as this package's
    models do with ``use_ema``."""
    return bool(getattr(module, "use_ema", False)) and isinstance(getattr(module, "model_ema", None), LitEma)


class RNGStateCallback(Callback):
    """Saves :func:`rng_snapshot` with every checkpoint and restores it when training resumes.

    The snapshot is taken when the checkpoint is written and put back at the first ``on_train_batch_start`` of the
    resumed fit: after the sanity check, the dataloader set-up and Lightning's fast-forward over a validation it
    skips, whose draws the uninterrupted run made before the checkpoint or not at all. (The train batch itself was
    loaded without the global generators, see :mod:`ldm.cli.resumable_data`.)

    Validation during fitting does not consume the training's random numbers: the generators are put back at
    ``on_validation_end`` as they were at the end of the last training batch. (A run resumed from a checkpoint
    written just before a validation skips that validation; the training stream must not depend on it.)

    Lightning calls the callbacks' ``on_train_batch_end`` (where checkpoints are saved) before the module's (where
    the models of this package update their :class:`~ldm.modules.ema.LitEma`). A module with ``use_ema`` resumed
    from such a checkpoint gets the call it missed, so its EMA weights match the uninterrupted run too.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, Any] | None = None
        self._training_stream: dict[str, Any] | None = None
        self._validating = False

    def state_dict(self) -> dict[str, Any]:
        held = self._training_stream if self._validating else None
        return {"rng": held or rng_snapshot()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop.restarted_on_train_batch_end and keeps_ema(pl_module):
            pl_module.on_train_batch_end(None, None, epoch_loop.batch_idx)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._pending is None:
            return
        rng_restore(self._pending)
        logger.info("restored the random-number generators of the interrupted run (%s)", ", ".join(self._pending))
        self._pending = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._training_stream = rng_snapshot()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validating = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validating and self._training_stream is not None:
            rng_restore(self._training_stream)
        self._validating = False

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self.state_key not in checkpoint.get("callbacks", {}):
            logger.warning("the checkpoint has no random-number state (written before it was saved): the resumed run "
                           "will not draw the numbers the interrupted run would have drawn")
