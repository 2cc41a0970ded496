"""Train (``-t``) and test latent-diffusion models from YAML configs on Lightning 2 (the CompVis ``main.py`` CLI).

    python main.py --base configs/autoencoder/autoencoder_kl_32x32x4.yaml -t --accelerator gpu --devices 0,
    python main.py -r logs/2026-11-24T00-00-00_cfg            # continue that run

The implementation lives in :mod:`ldm.cli`; this module is the entry point and re-exports the names configs
and users import from ``main`` (``main.DataModuleFromConfig``, ``main.ImageLogger``, ``main.get_parser``, ...).
"""

# ruff: noqa: E402 (the SIGUSR1 handler goes in before the slow imports)
from __future__ import annotations

import sys

if __name__ == "__main__":
    from ldm.cli.early_signals import hold_checkpoint_signal

    hold_checkpoint_signal()  # a SIGUSR1 while the run starts is kept for later instead of killing it

from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from ldm.callbacks import CUDACallback, ImageLogger, SetupCallback, SignalCheckpoint
from ldm.cli.args import get_parser, nondefault_trainer_args, str2bool, trainer_arg_names
from ldm.cli.config import load_config, trainer_config
from ldm.cli.errors import UsageError
from ldm.cli.paths import TIMESTAMP_ENV, RunPaths, new_run, resolve_resume
from ldm.cli.run import fit_and_test, main
from ldm.cli.trainer import build, callbacks_config, checkpoint_config, logger_config, scale_learning_rate
from ldm.data.base import Txt2ImgIterableBaseDataset
from ldm.data.datamodule import DataModuleFromConfig, WrappedDataset, worker_init_fn

__all__ = [
    "CUDACallback",
    "DataModuleFromConfig",
    "ImageLogger",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "RunPaths",
    "SetupCallback",
    "SignalCheckpoint",
    "TIMESTAMP_ENV",
    "Txt2ImgIterableBaseDataset",
    "UsageError",
    "WrappedDataset",
    "build",
    "callbacks_config",
    "checkpoint_config",
    "fit_and_test",
    "get_parser",
    "load_config",
    "logger_config",
    "main",
    "new_run",
    "nondefault_trainer_args",
    "resolve_resume",
    "scale_learning_rate",
    "str2bool",
    "trainer_arg_names",
    "trainer_config",
    "worker_init_fn",
]

if __name__ == "__main__":
    sys.exit(main())
