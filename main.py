"""Train (``-t``) and test latent-diffusion models from YAML configs on Lightning 2 (the CompVis ``main.py`` CLI).

    python main.py --base configs/autoencoder/autoencoder_kl_32x32x4.yaml -t --accelerator gpu --devices 0,
    python main.py -b cfg.yaml -t model.params.ckpt_path=x.ckpt lightning.trainer.max_steps=1000
    python main.py -r logs/2026-11-24T00-00-00_cfg            # continue that run (or -r .../checkpoints/x.ckpt)

Configs are merged left to right, then ``key.path=value`` dotlist overrides. ``--<trainer argument> value``
(``--max_steps``, ``--devices``, ``--strategy``, ...) overrides ``lightning.trainer``. A run writes
``<logdir>/<now>_<name><postfix>/`` with ``checkpoints/``, ``configs/``, ``images/`` and the logger's folder.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import importlib.util
import inspect
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import LightningModule, Trainer, seed_everything
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info

from ldm.callbacks import AtomicCheckpointIO, CUDACallback, ImageLogger, SetupCallback, SignalCheckpoint
from ldm.data.datamodule import DataModuleFromConfig, WrappedDataset, worker_init_fn
from ldm.util import ConfigError, get_obj_from_str, instantiate_from_config

__all__ = [
    "CUDACallback",
    "DataModuleFromConfig",
    "ImageLogger",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "SetupCallback",
    "SignalCheckpoint",
    "WrappedDataset",
    "main",
    "worker_init_fn",
]

logger = logging.getLogger("main")

#: Trainer arguments main.py sets itself; they cannot be given as ``--<name>``.
RESERVED_TRAINER_ARGS = ("self", "logger", "callbacks", "plugins", "default_root_dir")
#: Shared by the DDP processes Lightning starts by re-running this script, so they agree on the logdir.
TIMESTAMP_ENV = "LDM_MAIN_TIMESTAMP"


class UsageError(Exception):
    """Bad command-line input; reported as one line."""


# ----------------------------------------------------------------------------------------------------------------
# command line


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


def parse_value(text: str) -> Any:
    """A command-line value as YAML reads it: ``2`` → 2, ``0.5`` → 0.5, ``0,`` → ``"0,"``, ``16-mixed`` → str."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def get_parser() -> argparse.ArgumentParser:
    """The original options plus every ``Trainer`` argument as ``--<name>`` (and ``--gpus`` as in Lightning 1)."""
    parser = argparse.ArgumentParser(
        prog="main.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    flag = {"type": str2bool, "nargs": "?", "const": True}
    parser.add_argument("-n", "--name", type=str, const=True, default="", nargs="?", help="postfix for logdir")
    parser.add_argument(
        "-r", "--resume", type=str, const=True, default="", nargs="?",
        help="resume from logdir or checkpoint in logdir",
    )
    parser.add_argument(
        "-b", "--base", nargs="*", metavar="base_config.yaml", default=[],
        help="paths to base configs, merged left to right; `key.path=value` arguments are merged last",
    )
    parser.add_argument("-t", "--train", default=False, help="train", **flag)
    parser.add_argument("--no-test", default=False, help="disable test", **flag)
    parser.add_argument("-p", "--project", help="name of new or path to existing project (kept for compatibility)")
    parser.add_argument("-d", "--debug", default=False, help="enable post-mortem debugging", **flag)
    parser.add_argument("-s", "--seed", type=int, default=23, help="seed for seed_everything")
    parser.add_argument("-f", "--postfix", type=str, default="", help="post-postfix for default name")
    parser.add_argument("-l", "--logdir", type=str, default="logs", help="directory for logging")
    parser.add_argument(
        "--scale_lr", default=True, help="scale base-lr by accumulate * devices * nodes * batch_size", **flag
    )
    trainer_args = parser.add_argument_group("Lightning Trainer arguments (override lightning.trainer)")
    trainer_args.add_argument(
        "--gpus", type=parse_value, default=argparse.SUPPRESS,
        help="Lightning 1 style: '0,' or '0,1' (GPU ids) or a count; maps to --accelerator gpu --devices",
    )
    for name, parameter in inspect.signature(Trainer.__init__).parameters.items():
        if name in RESERVED_TRAINER_ARGS:
            continue
        kwargs: dict[str, Any] = {"type": parse_value, "default": argparse.SUPPRESS, "metavar": name.upper()}
        if "bool" in str(parameter.annotation):
            kwargs.update(nargs="?", const=True)
        trainer_args.add_argument(f"--{name}", help=f"Trainer({name}=...), default {parameter.default!r}", **kwargs)
    return parser


def trainer_arg_names() -> set[str]:
    return {n for n in inspect.signature(Trainer.__init__).parameters if n not in RESERVED_TRAINER_ARGS} | {"gpus"}


# ----------------------------------------------------------------------------------------------------------------
# run folder


@dataclass
class RunPaths:
    """Where a run lives: ``logdir`` with ``checkpoints/`` and ``configs/``; ``resume_ckpt`` when resuming."""

    nowname: str
    logdir: str
    resume_ckpt: str | None
    saved_configs: list[str]

    @property
    def ckptdir(self) -> str:
        return os.path.join(self.logdir, "checkpoints")

    @property
    def cfgdir(self) -> str:
        return os.path.join(self.logdir, "configs")


def resolve_resume(resume: str) -> RunPaths:
    """``-r <logdir>`` or ``-r <logdir>/checkpoints/<x>.ckpt`` → the run to continue."""
    path = Path(resume)
    if not path.exists():
        raise UsageError(f"-r {resume}: no such file or directory.")
    if path.is_file():
        ckptdir = next((p for p in path.parents if p.name == "checkpoints"), None)
        if ckptdir is None or not (ckptdir.parent / "configs").is_dir():
            raise UsageError(
                f"-r {resume}: not a checkpoint inside a logdir (<logdir>/checkpoints/*.ckpt next to "
                f"<logdir>/configs/). To start from released weights use model.params.ckpt_path={resume} instead."
            )
        logdir, ckpt = ckptdir.parent, path
    else:
        logdir, ckpt = path, path / "checkpoints" / "last.ckpt"
        if not (logdir / "configs").is_dir() or not ckpt.is_file():
            raise UsageError(
                f"-r {resume}: not a logdir (expected configs/*.yaml and checkpoints/last.ckpt inside it)."
            )
    saved = sorted(str(p) for p in (logdir / "configs").glob("*.yaml"))
    return RunPaths(nowname=logdir.name, logdir=str(logdir), resume_ckpt=str(ckpt), saved_configs=saved)


def new_run(opt: argparse.Namespace, now: str) -> RunPaths:
    if opt.name:
        name = f"_{opt.name}"
    elif opt.base:
        name = f"_{Path(opt.base[0]).stem}"
    else:
        name = ""
    nowname = now + name + opt.postfix
    return RunPaths(nowname=nowname, logdir=os.path.join(opt.logdir, nowname), resume_ckpt=None, saved_configs=[])


def run_timestamp() -> str:
    """This run's ``%Y-%m-%dT%H-%M-%S``; DDP processes started by Lightning inherit rank 0's."""
    if "LOCAL_RANK" in os.environ and TIMESTAMP_ENV in os.environ:
        return os.environ[TIMESTAMP_ENV]
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    os.environ[TIMESTAMP_ENV] = now
    return now


# ----------------------------------------------------------------------------------------------------------------
# configs


def _accepted_params(target: Any) -> set[str] | None:
    """Keyword names ``target`` accepts (following ``**kwargs`` up the class hierarchy); None if anything goes."""
    try:
        obj = get_obj_from_str(target)
    except ConfigError:
        return None
    functions = [cls.__init__ for cls in obj.__mro__] if inspect.isclass(obj) else [obj]
    names: set[str] = set()
    for function in functions:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names - {"self"}
    return None


def check_dotlist_key(config: DictConfig, key: str) -> None:
    """Raise :class:`UsageError` if ``key`` is not a path of ``config`` and cannot be a new one.

    New keys are allowed under ``lightning.`` and as keyword arguments of a ``params`` node's ``target``.
    """
    parts = key.split(".")
    node: Any = config
    for depth, part in enumerate(parts):
        where = repr(".".join(parts[:depth])) if depth else "the config"
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
            continue
        if parts[0] == "lightning":
            return
        if not isinstance(node, DictConfig):
            raise UsageError(f"unknown config key {key!r}: {where} is not a mapping.")
        is_new_param = depth == len(parts) - 1 and depth > 0 and parts[depth - 1] == "params"
        choices = [str(k) for k in node.keys()]
        if is_new_param:
            parent = OmegaConf.select(config, ".".join(parts[:-2])) if depth > 1 else config
            accepted = _accepted_params(parent.get("target")) if isinstance(parent, DictConfig) else None
            if accepted is None or part in accepted:
                return
            choices = sorted(accepted)
        close = difflib.get_close_matches(part, choices, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else f"; known: {sorted(choices)}"
        raise UsageError(f"unknown config key {key!r}: {where} has no key {part!r}{hint}")


def load_config(paths: list[str], dotlist: list[str]) -> DictConfig:
    """Merge the YAML files left to right, then the ``key.path=value`` overrides."""
    configs = []
    for path in paths:
        if not os.path.isfile(path):
            raise UsageError(f"config file {path!r} not found.")
        configs.append(OmegaConf.load(path))
    config = OmegaConf.merge(*configs) if configs else OmegaConf.create()
    bad = [item for item in dotlist if "=" not in item or item.startswith("-")]
    if bad:
        raise UsageError(f"unrecognized argument(s) {bad}; config overrides are written key.path=value.")
    for item in dotlist:
        check_dotlist_key(config, item.split("=", 1)[0])
    return OmegaConf.merge(config, OmegaConf.from_dotlist(dotlist))


def _lightning2_keys(trainer: dict[str, Any]) -> dict[str, Any]:
    """``gpus: 0,`` → ``accelerator: gpu, devices: "0,"`` (``gpus: 0`` → CPU); ``accelerator: ddp`` → ``strategy``."""
    trainer = dict(trainer)
    if "gpus" in trainer:
        gpus = trainer.pop("gpus")
        if gpus in (0, None, "", "0"):
            trainer["accelerator"] = "cpu"
        else:
            trainer["accelerator"], trainer["devices"] = "gpu", gpus
    if trainer.get("accelerator") in ("ddp", "ddp_spawn", "dp"):
        trainer["strategy"] = trainer.pop("accelerator")
    return trainer


def trainer_config(lightning_config: DictConfig, cli: dict[str, Any]) -> DictConfig:
    """``lightning.trainer`` updated by the command line, Lightning 1 keys mapped to Lightning 2 ones in each."""
    saved = OmegaConf.to_container(lightning_config.get("trainer", OmegaConf.create()), resolve=True)
    config = OmegaConf.merge(_lightning2_keys(saved), _lightning2_keys(cli))
    valid = trainer_arg_names()
    for key in config:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"lightning.trainer.{key} is not a pytorch_lightning.Trainer argument{hint}")
    return config


# ----------------------------------------------------------------------------------------------------------------
# trainer assembly


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
    """``last.ckpt`` always; with a ``model.monitor`` also the best 3 by that metric."""
    params: dict[str, Any] = {"dirpath": paths.ckptdir, "filename": "{epoch:06}", "verbose": True, "save_last": True}
    if getattr(model, "monitor", None):
        rank_zero_info(f"Monitoring {model.monitor} as checkpoint metric.")
        params.update(monitor=model.monitor, save_top_k=3)
    default = {"target": "pytorch_lightning.callbacks.ModelCheckpoint", "params": params}
    return OmegaConf.merge(default, lightning_config.get("modelcheckpoint", OmegaConf.create()))


def callbacks_config(
    opt: argparse.Namespace, now: str, paths: RunPaths, config: DictConfig, lightning_config: DictConfig,
    modelckpt: DictConfig,
) -> DictConfig:
    """The original default callbacks, merged with ``lightning.callbacks``."""
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
    return OmegaConf.merge(defaults, user)


def move_accumulation_to_model(model: Any, lightning_config: DictConfig) -> int:
    """Gradient accumulation for models that optimise manually (the adversarial autoencoders).

    Lightning refuses ``Trainer(accumulate_grad_batches>1)`` with manual optimisation, so the setting moves to the
    module's ``accumulate_grad_batches`` (which then accumulates itself) and the Trainer gets 1. Returns the count.
    """
    accumulate = int(lightning_config.trainer.accumulate_grad_batches)
    if accumulate > 1 and not getattr(model, "automatic_optimization", True):
        if not hasattr(model, "accumulate_grad_batches"):
            raise UsageError(
                f"{type(model).__name__} optimises manually and cannot accumulate gradients; remove "
                "lightning.trainer.accumulate_grad_batches or set it to 1."
            )
        model.accumulate_grad_batches = accumulate
        lightning_config.trainer.accumulate_grad_batches = 1
    return accumulate


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


def build(
    opt: argparse.Namespace, cli_trainer: dict[str, Any], dotlist: list[str]
) -> tuple[RunPaths, LightningModule, Any, Trainer]:
    """The run's paths, model, datamodule and Trainer, from the merged configs and the command line."""
    now = run_timestamp()
    if opt.name and opt.resume:
        raise UsageError("-n/--name and -r/--resume cannot be used together; -r continues the run in its logdir.")
    paths = resolve_resume(opt.resume) if opt.resume else new_run(opt, now)
    config = load_config(paths.saved_configs + list(opt.base), dotlist)
    for section in ("model", "data"):
        if section not in config:
            raise UsageError(f"the merged config has no '{section}' section; pass its config with -b/--base.")
    lightning_config = config.pop("lightning", OmegaConf.create())
    lightning_config.trainer = trainer_config(lightning_config, cli_trainer)
    lightning_config.trainer.setdefault("accumulate_grad_batches", 1)

    seed_everything(opt.seed)
    model = instantiate_from_config(config.model, name="model")
    accumulate = move_accumulation_to_model(model, lightning_config)
    data = instantiate_from_config(config.data, name="data")
    logger_cfg = logger_config(lightning_config, paths)
    modelckpt = checkpoint_config(model, lightning_config, paths)
    callbacks_cfg = callbacks_config(opt, now, paths, config, lightning_config, modelckpt)
    trainer = Trainer(
        **OmegaConf.to_container(lightning_config.trainer, resolve=True),
        logger=instantiate_from_config(logger_cfg, name="lightning.logger"),
        callbacks=[instantiate_from_config(callbacks_cfg[k], name=f"lightning.callbacks.{k}") for k in callbacks_cfg],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=paths.logdir,
    )
    trainer.logdir = paths.logdir
    scale_learning_rate(model, config, trainer, opt.scale_lr, accumulate)
    return paths, model, data, trainer


def fit_and_test(opt: argparse.Namespace, paths: RunPaths, model: Any, data: Any, trainer: Trainer) -> None:
    if opt.train:
        trainer.fit(model, data, ckpt_path=paths.resume_ckpt)
    if opt.no_test or trainer.interrupted:
        return
    if "test" not in getattr(data, "dataset_configs", {"test": None}):
        rank_zero_info("No data.params.test config: skipping the test stage.")
        return
    trainer.test(model, data, ckpt_path=None if opt.train else paths.resume_ckpt)


def move_debug_run(paths: RunPaths) -> None:
    """``-d`` runs end up in ``<logdir root>/debug_runs/`` (new runs only, as in the original)."""
    if not os.path.isdir(paths.logdir):
        return
    root, name = os.path.split(paths.logdir)
    destination = os.path.join(root, "debug_runs", name)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    shutil.move(paths.logdir, destination)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for bad input: a bad option, config key or path, reported as one
    line on stderr)."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = get_parser()
    opt, unknown = parser.parse_known_args(argv)
    cli_trainer = {k: v for k, v in vars(opt).items() if k in trainer_arg_names()}
    trainer = paths = None
    try:
        paths, model, data, trainer = build(opt, cli_trainer, unknown)
        fit_and_test(opt, paths, model, data, trainer)
    except (UsageError, ConfigError, FileNotFoundError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except Exception:
        if opt.debug and (trainer is None or trainer.global_rank == 0):
            import pdb

            pdb.post_mortem()
        raise
    finally:
        if opt.debug and not opt.resume and paths is not None and (trainer is None or trainer.global_rank == 0):
            move_debug_run(paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
