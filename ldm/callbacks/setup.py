"""``SetupCallback``: creates the log directory tree and saves the merged configs (rank 0 only)."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn

logger = logging.getLogger(__name__)


class SetupCallback(Callback):
    """At the start of fitting, make ``logdir``, ``ckptdir`` and ``cfgdir`` and write
    ``<cfgdir>/<now>-project.yaml`` (model and data) and ``<cfgdir>/<now>-lightning.yaml`` (``lightning:``).

    ``-r <logdir>`` merges these files back in sorted order, so each resumed run adds its own pair.
    """

    def __init__(
        self,
        resume: Any,
        now: str,
        logdir: str,
        ckptdir: str,
        cfgdir: str,
        config: DictConfig,
        lightning_config: DictConfig,
    ):
        super().__init__()
        self.resume, self.now = resume, now
        self.logdir, self.ckptdir, self.cfgdir = logdir, ckptdir, cfgdir
        self.config, self.lightning_config = config, lightning_config

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING or not trainer.is_global_zero:
            return
        for folder in (self.logdir, self.ckptdir, self.cfgdir):
            os.makedirs(folder, exist_ok=True)
        if "metrics_over_trainsteps_checkpoint" in self.lightning_config.get("callbacks", {}):
            os.makedirs(os.path.join(self.ckptdir, "trainstep_checkpoints"), exist_ok=True)
        logger.info("Project config\n%s", OmegaConf.to_yaml(self.config))
        OmegaConf.save(self.config, os.path.join(self.cfgdir, f"{self.now}-project.yaml"))
        logger.info("Lightning config\n%s", OmegaConf.to_yaml(self.lightning_config))
        OmegaConf.save(
            OmegaConf.create({"lightning": self.lightning_config}),
            os.path.join(self.cfgdir, f"{self.now}-lightning.yaml"),
        )
