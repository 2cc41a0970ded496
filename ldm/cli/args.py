"""``main.py`` options: the LDM ones plus every Lightning 2 ``Trainer`` argument as ``--<name>``."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

import yaml
from pytorch_lightning import Trainer

from ldm.cli.validation import OneLineParser, int_in

#: Trainer arguments main.py sets itself; they cannot be given as ``--<name>``.
RESERVED_TRAINER_ARGS = ("self", "logger", "callbacks", "plugins", "default_root_dir")

DESCRIPTION = """Train (-t) and test latent-diffusion models from YAML configs (the CompVis main.py CLI).

  python main.py --base configs/autoencoder/autoencoder_kl_32x32x4.yaml -t --accelerator gpu --devices 0,
  python main.py -b cfg.yaml -t model.params.ckpt_path=x.ckpt lightning.trainer.max_steps=1000
  python main.py -r logs/2026-11-24T00-00-00_cfg            # continue that run (or -r .../checkpoints/x.ckpt)

Configs are merged left to right, then `key.path=value` dotlist overrides. `--<trainer argument> value`
(--max_steps, --devices, --strategy, ...) overrides lightning.trainer. A run writes
<logdir>/<now>_<name><postfix>/ with checkpoints/, configs/, images/ and the logger's folder.
"""


def str2bool(value: str | bool) -> bool:
    """``yes/true/t/y/1`` → True, ``no/false/f/n/0`` → False (any case)."""
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


def trainer_defaults() -> dict[str, Any]:
    """``{name: default}`` of the ``Trainer`` arguments that can be given on the command line."""
    parameters = inspect.signature(Trainer.__init__).parameters
    return {name: p.default for name, p in parameters.items() if name not in RESERVED_TRAINER_ARGS}


def trainer_arg_names() -> set[str]:
    """The ``--<name>`` Trainer options (``--gpus`` included, mapped to Lightning 2 keys later)."""
    return set(trainer_defaults()) | {"gpus"}


def get_parser(**parser_kwargs: Any) -> argparse.ArgumentParser:
    """The LDM options plus every ``Trainer`` argument as ``--<name>`` (and ``--gpus``, read as in Lightning 1).

    ``parser_kwargs`` go to ``argparse.ArgumentParser``. Trainer options default to
    "absent" (``argparse.SUPPRESS``), so only those given appear in the namespace.
    """
    kwargs = {"prog": "main.py", "description": DESCRIPTION, "formatter_class": argparse.RawDescriptionHelpFormatter}
    parser = OneLineParser(**{**kwargs, **parser_kwargs})
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
    parser.add_argument("-p", "--project", help="name of new or path to existing project (accepted, unused)")
    parser.add_argument("-d", "--debug", default=False, help="enable post-mortem debugging", **flag)
    parser.add_argument("-s", "--seed", type=int_in(0, 2**32 - 1), default=23, help="seed for seed_everything")
    parser.add_argument("-f", "--postfix", type=str, default="", help="post-postfix for default name")
    parser.add_argument("-l", "--logdir", type=str, default="logs", help="directory for logging")
    parser.add_argument(
        "--scale_lr", default=True, help="scale base-lr by accumulate * devices * nodes * batch_size", **flag
    )
    parser.add_argument(
        "--resume_from_checkpoint", type=str, default=None,
        help="start a new logdir (e.g. with -n) from this checkpoint's full training state (Lightning 1 option)",
    )
    parser.add_argument(
        "--trust-config", dest="trust_config", action="store_true",
        help="with -r: build the run's saved configs even where they name targets outside this package's classes "
        "(configs given with -b are always trusted)",
    )
    trainer_args = parser.add_argument_group("Lightning Trainer arguments (override lightning.trainer)")
    trainer_args.add_argument(
        "--gpus", type=parse_value, default=argparse.SUPPRESS,
        help="Lightning 1 style: '0,' or '0,1' (GPU ids) or a count; maps to --accelerator gpu --devices",
    )
    for name, parameter in inspect.signature(Trainer.__init__).parameters.items():
        if name in RESERVED_TRAINER_ARGS:
            continue
        kwargs = {"type": parse_value, "default": argparse.SUPPRESS, "metavar": name.upper()}
        if "bool" in str(parameter.annotation):
            kwargs.update(nargs="?", const=True)
        trainer_args.add_argument(f"--{name}", help=f"Trainer({name}=...), default {parameter.default!r}", **kwargs)
    return parser


def nondefault_trainer_args(opt: argparse.Namespace) -> list[str]:
    """Sorted names of the Trainer options in ``opt`` whose value differs from the ``Trainer`` default."""
    defaults = trainer_defaults()
    given = {k for k in vars(opt) if k in defaults or k == "gpus"}
    return sorted(k for k in given if k == "gpus" or getattr(opt, k) != defaults[k])
