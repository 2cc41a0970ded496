"""``main()``: parse, build, fit (``-t``) and test; bad input is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from typing import Any

from pytorch_lightning import Trainer
from pytorch_lightning.utilities import rank_zero_info

from ldm.cli.args import get_parser, trainer_arg_names
from ldm.cli.errors import UsageError
from ldm.cli.paths import RunPaths
from ldm.cli.trainer import build
from ldm.util import ConfigError


def fit_and_test(opt: argparse.Namespace, paths: RunPaths, model: Any, data: Any, trainer: Trainer) -> None:
    """``fit`` with ``-t`` (from ``paths.resume_ckpt`` when resuming), then ``test`` unless ``--no-test``, the
    run was interrupted, or there is no ``data.params.test``. Without ``-t`` the test uses the resumed weights."""
    if opt.train:
        trainer.fit(model, data, ckpt_path=paths.resume_ckpt)
    if opt.no_test or trainer.interrupted:
        return
    if "test" not in getattr(data, "dataset_configs", {"test": None}):
        rank_zero_info("No data.params.test config: skipping the test stage.")
        return
    trainer.test(model, data, ckpt_path=None if opt.train else paths.resume_ckpt)


def move_debug_run(paths: RunPaths) -> None:
    """``-d`` runs end up in ``<logdir root>/debug_runs/`` (new runs only)."""
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
