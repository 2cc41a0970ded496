"""Where a run lives: ``<logdir>/<now>_<name><postfix>/`` for a new run, the given logdir for ``-r``."""

from __future__ import annotations

import argparse
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from ldm.cli.errors import UsageError

#: Shared by the DDP processes Lightning starts by re-running main.py, so they agree on the logdir.
TIMESTAMP_ENV = "LDM_MAIN_TIMESTAMP"


@dataclass
class RunPaths:
    """A run's ``logdir`` with ``checkpoints/`` and ``configs/``; ``resume_ckpt`` when resuming."""

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
    """``-r <logdir>`` or ``-r <logdir>/checkpoints/<x>.ckpt`` → the run to continue, with its saved configs
    (``configs/*.yaml`` in sorted order, merged before any ``-b``)."""
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
    """``<opt.logdir>/<now>_<name><postfix>``: ``name`` is ``-n`` or else the first ``-b`` file's stem.

    ``--resume_from_checkpoint`` (Lightning 1's way to continue into a new logdir) becomes ``resume_ckpt``.
    """
    if opt.name:
        name = f"_{opt.name}"
    elif opt.base:
        name = f"_{Path(opt.base[0]).stem}"
    else:
        name = ""
    nowname = now + name + opt.postfix
    resume_ckpt = getattr(opt, "resume_from_checkpoint", None)
    if resume_ckpt and not os.path.isfile(resume_ckpt):
        raise UsageError(f"--resume_from_checkpoint {resume_ckpt}: no such file.")
    return RunPaths(nowname=nowname, logdir=os.path.join(opt.logdir, nowname), resume_ckpt=resume_ckpt or None,
                    saved_configs=[])


def run_timestamp() -> str:
    """This run's ``%Y-%m-%dT%H-%M-%S``; DDP processes started by Lightning inherit rank 0's."""
    if "LOCAL_RANK" in os.environ and TIMESTAMP_ENV in os.environ:
        return os.environ[TIMESTAMP_ENV]
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    os.environ[TIMESTAMP_ENV] = now
    return now
