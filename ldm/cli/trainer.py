"""Trainer assembly: logger, ``ModelCheckpoint``, the default callbacks, learning-rate scaling."""

from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import LightningModule, Trainer, seed_everything
from pytorch_lightning.strategies import ParallelStrategy
from pytorch_lightning.utilities import rank_zero_info

from ldm.callbacks import AtomicCheckpointIO
from ldm.checkpoint import CheckpointError
from ldm.cli.config import legacy_resume, load_config, trainer_config
from ldm.cli.errors import UsageError
from ldm.cli.fsdp import adapt_callbacks, fsdp_strategy, wants_fsdp
from ldm.cli.paths import RunPaths, new_run, resolve_resume, run_timestamp
from ldm.cli.resumable_data import resumable_train_data
from ldm.util import ConfigError, instantiate_from_config


def logger_config(lightning_config: DictConfig, paths: RunPaths) -> DictConfig:
    """``lightning.logger`` over the default: TensorBoard in ``<logdir>/tensorboard`` when installed, else CSV in
    ``<logdir>/csv``; another ``target`` only gets ``save_dir: <logdir>`` as default."""
    if any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")):
        default = {"target": "pytorch_lightning.loggers.TensorBoardLogger",
                   "params": {"name": "tensorboard", "save_dir": paths.logdir}}
    else:
        default = {"target": "pytorch_lightning.loggers.CSVLogger", "params": {"name": "csv", "save_dir": paths.logdir}}
    user = lightning_config.get("logger", OmegaConf.create())
    if user.get("target", default["target"]) != default["target"]:
        default = {"target": user.target, "params": {"save_dir": paths.logdir}}
    return OmegaConf.merge(default, user)


def checkpoint_config(model: Any, lightning_config: DictConfig, paths: RunPaths) -> DictConfig:
    """``last.ckpt`` always; with a ``model.monitor`` also the best 3 by that metric.

    Files are overwritten, never versioned (``last-v1.ckpt``): a resumed run keeps updating ``last.ckpt``, even
    when its logdir was moved.
    """
    params: dict[str, Any] = {"dirpath": paths.ckptdir, "filename": "{epoch:06}", "verbose": True, "save_last": True,
                              "enable_version_counter": False}
    if getattr(model, "monitor", None):
        rank_zero_info(f"Monitoring {model.monitor} as checkpoint metric.")
        params.update(monitor=model.monitor, save_top_k=3)
    default = {"target": "pytorch_lightning.callbacks.ModelCheckpoint", "params": params}
    return OmegaConf.merge(default, lightning_config.get("modelcheckpoint", OmegaConf.create()))


def callbacks_config(
    opt: argparse.Namespace, now: str, paths: RunPaths, config: DictConfig, lightning_config: DictConfig,
    modelckpt: DictConfig,
) -> DictConfig:
    """The default callbacks (setup, image logger, learning-rate monitor, CUDA stats, ``signal_checkpoint``,
    ``rng_state``, ``fast_training``), merged with ``lightning.callbacks``.

    An ``ignore_keys_callback`` entry gets ``params.ckpt_path`` = the checkpoint resumed from, and is dropped
    when nothing is resumed.
    """
    defaults: dict[str, Any] = {
        "setup_callback": {
            "target": "ldm.callbacks.SetupCallback",
            "params": {"resume": opt.resume, "now": now, "logdir": paths.logdir, "ckptdir": paths.ckptdir,
                       "cfgdir": paths.cfgdir, "config": config, "lightning_config": lightning_config},
        },
        "image_logger": {
            "target": "ldm.callbacks.ImageLogger",
            "params": {"batch_frequency": 750, "max_images": 4, "clamp": True},
        },
        "learning_rate_logger": {
            "target": "pytorch_lightning.callbacks.LearningRateMonitor",
            "params": {"logging_interval": "step"},
        },
        "cuda_callback": {"target": "ldm.callbacks.CUDACallback"},
        "signal_checkpoint": {"target": "ldm.callbacks.SignalCheckpoint", "params": {"ckptdir": paths.ckptdir}},
        "rng_state": {"target": "ldm.callbacks.RNGStateCallback"},
        "fast_training": {"target": "ldm.callbacks.FastTrainingConvs", "params": {"enabled": True}},
        "checkpoint_callback": modelckpt,
    }
    user = lightning_config.get("callbacks", OmegaConf.create())
    if "metrics_over_trainsteps_checkpoint" in user:
        rank_zero_info("Caution: saving checkpoints every n train steps without deleting; mind the disk space.")
        defaults["metrics_over_trainsteps_checkpoint"] = {
            "target": "pytorch_lightning.callbacks.ModelCheckpoint",
            "params": {"dirpath": os.path.join(paths.ckptdir, "trainstep_checkpoints"),
                       "filename": "{epoch:06}-{step:09}", "verbose": True, "save_top_k": -1,
                       "every_n_train_steps": 10000, "save_weights_only": True},
        }
    callbacks = OmegaConf.merge(defaults, user)
    if "ignore_keys_callback" in callbacks:
        if paths.resume_ckpt:
            callbacks.ignore_keys_callback.params["ckpt_path"] = paths.resume_ckpt
        else:
            del callbacks["ignore_keys_callback"]
    return callbacks


def accumulation_for(model: Any, accumulate: int) -> int:
    """``Trainer(accumulate_grad_batches=)`` for ``model``: ``accumulate``, or 1 for models that optimise manually
    (the adversarial autoencoders), which Lightning refuses to accumulate for; those get the setting as their own
    ``accumulate_grad_batches`` attribute and accumulate themselves. The saved lightning config keeps the user's
    value, so ``-r`` restores it."""
    if accumulate <= 1 or getattr(model, "automatic_optimization", True):
        return accumulate
    if not hasattr(model, "accumulate_grad_batches"):
        raise UsageError(
            f"{type(model).__name__} optimises manually and cannot accumulate gradients; remove "
            "lightning.trainer.accumulate_grad_batches or set it to 1."
        )
    model.accumulate_grad_batches = accumulate
    return 1


def scale_learning_rate(model: Any, config: DictConfig, trainer: Trainer, scale_lr: bool, accumulate: int) -> float:
    """``lr = accumulate_grad_batches × devices × nodes × batch_size × base_learning_rate`` (or the base rate)."""
    base_lr = config.model.get("base_learning_rate")
    if base_lr is None:
        raise UsageError("model.base_learning_rate is missing; add it to the model config.")
    if not scale_lr:
        model.learning_rate = base_lr
        rank_zero_info(f"++++ NOT USING LR SCALING ++++\nSetting learning rate to {base_lr:.2e}")
        return base_lr
    batch_size = config.data.params.batch_size
    devices, nodes = trainer.num_devices, trainer.num_nodes
    model.learning_rate = accumulate * devices * nodes * batch_size * base_lr
    rank_zero_info(
        f"Setting learning rate to {model.learning_rate:.2e} = {accumulate} (accumulate_grad_batches) * "
        f"{devices} (num_devices) * {nodes} (num_nodes) * {batch_size} (batchsize) * {base_lr:.2e} (base_lr)"
    )
    return model.learning_rate


def checkpoint_keys(node: Any, prefix: str = "model") -> dict[str, str]:
    """``{path: config key}`` of every ``ckpt_path`` set in ``node`` (plain containers), e.g. ``{"ae.ckpt":
    "model.params.first_stage_config.params.ckpt_path"}``."""
    found: dict[str, str] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ckpt_path" and isinstance(value, str):
                found[value] = f"{prefix}.{key}"
            else:
                found.update(checkpoint_keys(value, f"{prefix}.{key}"))
    return found


def build_model(config: DictConfig) -> LightningModule:
    """``config.model`` instantiated; a checkpoint it names (``ckpt_path``, a first stage's ``ckpt_path``) that is
    refused, corrupt or does not fit becomes a :class:`UsageError`: one line, naming the config key."""
    try:
        return instantiate_from_config(config.model, name="model")
    except (ConfigError, FileNotFoundError):
        raise
    except (CheckpointError, ValueError) as error:  # ValueError: a checkpoint that does not fit the config
        message = str(error)
        keys = checkpoint_keys(OmegaConf.to_container(config.model, resolve=False))
        where = next((key for path, key in keys.items() if path in message), "model")
        raise UsageError(f"{where}: {message}") from error


def make_data_resumable(data: Any, trainer: Trainer, seed: int) -> None:
    """Single-device runs: the train dataloader resumes mid-epoch exactly (:mod:`ldm.cli.resumable_data`), counting
    the batches the training loop processed. Parallel strategies (DDP, ...) keep Lightning's distributed sampler."""
    if isinstance(trainer.strategy, ParallelStrategy) or trainer.overfit_batches:
        return
    position = resumable_train_data(data, seed)
    if position is not None:
        position.batches_done = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed


def build(
    opt: argparse.Namespace, cli_trainer: dict[str, Any], dotlist: list[str]
) -> tuple[RunPaths, LightningModule, Any, Trainer]:
    """The run's paths, model, datamodule and Trainer, from the merged configs and the command line."""
    now = run_timestamp()
    if opt.name and opt.resume:
        raise UsageError("-n/--name and -r/--resume cannot be used together; -r continues the run in its logdir "
                         "(to continue in a new logdir use -n with --resume_from_checkpoint).")
    paths = resolve_resume(opt.resume) if opt.resume else new_run(opt, now)
    config = load_config(paths.saved_configs + list(opt.base), dotlist, untrusted=paths.saved_configs)
    for section in ("model", "data"):
        if section not in config:
            raise UsageError(f"the merged config has no '{section}' section; pass its config with -b/--base.")
    lightning_config = config.pop("lightning", OmegaConf.create())
    paths.resume_ckpt = paths.resume_ckpt or legacy_resume(lightning_config)
    lightning_config.trainer = trainer_config(lightning_config, cli_trainer)
    lightning_config.trainer.setdefault("accumulate_grad_batches", 1)
    accumulate = int(lightning_config.trainer.accumulate_grad_batches)

    seed_everything(opt.seed)
    model = build_model(config)
    trainer_kwargs = OmegaConf.to_container(lightning_config.trainer, resolve=True)
    trainer_kwargs["accumulate_grad_batches"] = accumulation_for(model, accumulate)
    sharded = wants_fsdp(trainer_kwargs)
    if sharded:
        trainer_kwargs["strategy"] = fsdp_strategy(model, trainer_kwargs, lightning_config)
    data = instantiate_from_config(config.data, name="data")
    logger_cfg = logger_config(lightning_config, paths)
    modelckpt = checkpoint_config(model, lightning_config, paths)
    callbacks_cfg = callbacks_config(opt, now, paths, config, lightning_config, modelckpt)
    trainer_logger = instantiate_from_config(logger_cfg, name="lightning.logger")
    callbacks = [instantiate_from_config(callbacks_cfg[k], name=f"lightning.callbacks.{k}") for k in callbacks_cfg]
    if sharded:
        adapt_callbacks(callbacks)
    trainer = Trainer(
        **trainer_kwargs,
        logger=trainer_logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=paths.logdir,
    )
    trainer.logdir = paths.logdir
    make_data_resumable(data, trainer, opt.seed)
    scale_learning_rate(model, config, trainer, opt.scale_lr, accumulate)
    return paths, model, data, trainer
