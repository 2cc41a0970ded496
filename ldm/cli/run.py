"""``main()``: parse, build, fit (``-t``) and test.

Exit status: 0 done; 2 bad input (an option, config key, path or checkpoint); 1 a checkpoint could not be written
(full disk), the previous ``last.ckpt`` kept; 143 (128 + SIGTERM) stopped by SIGTERM after writing ``last.ckpt``.
Each non-zero status comes with one line on stderr.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import signal
import sys
from typing import Any

from pytorch_lightning import Trainer
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ldm.callbacks import CheckpointWriteError
from ldm.checkpoint import CheckpointError
from ldm.cli.args import get_parser, trainer_arg_names
from ldm.cli.early_signals import hold_checkpoint_signal
from ldm.cli.errors import UsageError
from ldm.cli.paths import RunPaths
from ldm.cli.resume_check import preload_resume_checkpoint
from ldm.cli.trainer import build
from ldm.config_trust import trusting_configs
from ldm.util import ConfigError

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SIGTERM = 128 + signal.SIGTERM
#: ``OSError`` numbers that mean "the disk cannot take the write" (reported in one line, not a traceback).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def fit_and_test(opt: argparse.Namespace, paths: RunPaths, model: Any, data: Any, trainer: Trainer) -> None:
    """``fit`` with ``-t`` (from ``paths.resume_ckpt`` when resuming), then ``test`` unless ``--no-test``, the
    run was interrupted, or there is no ``data.params.test``. Without ``-t`` the test uses the resumed weights."""
    if opt.train:
        if paths.resume_ckpt:
            preload_resume_checkpoint(trainer, paths.resume_ckpt, model, training=True)
        trainer.fit(model, data, ckpt_path=paths.resume_ckpt)
    if opt.no_test or trainer.interrupted:
        return
    if "test" not in getattr(data, "dataset_configs", {"test": None}):
        rank_zero_info("No data.params.test config: skipping the test stage.")
        return
    if not opt.train and paths.resume_ckpt:
        preload_resume_checkpoint(trainer, paths.resume_ckpt, model, training=False)
    trainer.test(model, data, ckpt_path=None if opt.train else paths.resume_ckpt)


def sigterm_line(paths: RunPaths | None, trainer: Trainer | None) -> str:
    """What a SIGTERM'd run left behind, and how to continue it."""
    if trainer is None or paths is None or trainer.global_step == 0:
        return "stopped by SIGTERM before the first training step; no checkpoint written."
    last = os.path.join(paths.ckptdir, "last.ckpt")
    return (f"stopped by SIGTERM at global step {trainer.global_step}; {last} holds the training state, continue "
            f"with -r {paths.logdir}")


def disk_line(error: OSError, paths: RunPaths | None) -> str:
    """A write that failed for lack of space, and which checkpoint survives."""
    last = os.path.join(paths.ckptdir, "last.ckpt") if paths is not None else None
    kept = f"; the last complete checkpoint is {last}" if last and os.path.isfile(last) else ""
    return f"{error}{kept}; free space (or choose another -l/--logdir) and continue with -r"


def move_debug_run(paths: RunPaths) -> None:
    """``-d`` runs end up in ``<logdir root>/debug_runs/`` (new runs only)."""
    if not os.path.isdir(paths.logdir):
        return
    root, name = os.path.split(paths.logdir)
    destination = os.path.join(root, "debug_runs", name)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    shutil.move(paths.logdir, destination)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring), each failure reported as one line."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    hold_checkpoint_signal()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = get_parser()
    opt, unknown = parser.parse_known_args(argv)
    cli_trainer = {k: v for k, v in vars(opt).items() if k in trainer_arg_names()}
    trainer = paths = None
    try:
        with trusting_configs(opt.trust_config):
            paths, model, data, trainer = build(opt, cli_trainer, unknown)
        fit_and_test(opt, paths, model, data, trainer)
    except (UsageError, ConfigError, FileNotFoundError, CheckpointError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except SIGTERMException:
        print(f"{parser.prog}: {sigterm_line(paths, trainer)}", file=sys.stderr)
        return EXIT_SIGTERM
    except Exception as error:
        if isinstance(error, CheckpointWriteError) or (isinstance(error, OSError) and error.errno in DISK_FULL):
            print(f"{parser.prog}: error: {disk_line(error, paths)}", file=sys.stderr)
            return EXIT_FAILURE
        if isinstance(error, OSError) and not opt.debug:  # a read-only or clashing log folder, an unreadable file
            print(f"{parser.prog}: error: {error} (run with --debug for the traceback)", file=sys.stderr)
            return EXIT_FAILURE
        if opt.debug and (trainer is None or trainer.global_rank == 0):
            import pdb

            pdb.post_mortem()
        raise
    finally:
        if opt.debug and not opt.resume and paths is not None and (trainer is None or trainer.global_rank == 0):
            move_debug_run(paths)
    return 0
