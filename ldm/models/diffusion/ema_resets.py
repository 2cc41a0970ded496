"""The EMA options of ``DDPM`` / ``LatentDiffusion`` applied after a checkpoint is loaded: ``reset_ema`` and
``reset_num_ema_updates`` (restarting from an EMA-only checkpoint, or a new EMA warm-up for a finetune)."""

from __future__ import annotations

import logging
from typing import Any

from ldm.modules.ema import LitEma
from ldm.util import SettingError

logger = logging.getLogger(__name__)


def apply_ema_resets(model: Any, ckpt_path: Any, reset_ema: bool, reset_num_ema_updates: bool) -> None:
    """``reset_ema``: after loading ``ckpt_path``, the EMA restarts from the loaded weights (a new
    ``LitEma(model.model)``). ``reset_num_ema_updates``: the EMA's update count (its decay warm-up) restarts at 0.

    Both need ``use_ema: true``; ``reset_ema`` also needs a ``ckpt_path``.
    """
    for flag, name in ((reset_ema, "reset_ema"), (reset_num_ema_updates, "reset_num_ema_updates")):
        if flag and not model.use_ema:
            raise SettingError(f"{name}: true needs use_ema: true (the model keeps no EMA to reset).")
    if reset_ema and ckpt_path is None:
        raise SettingError("reset_ema: true restarts the EMA from loaded weights; set model.params.ckpt_path too.")
    if reset_ema:
        logger.info("reset_ema: the EMA restarts from the weights of %s", ckpt_path)
        model.model_ema = LitEma(model.model)
    if reset_num_ema_updates:
        logger.warning("reset_num_ema_updates: the EMA's update count restarts at 0")
        model.model_ema.reset_num_updates()
