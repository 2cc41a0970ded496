"""The checkpoint of ``-r`` / ``--resume_from_checkpoint``: read safely once, checked against the model, then
handed to Lightning (so a rejected, corrupt or mismatched file is one line, and Lightning never unpickles it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ldm.callbacks import AtomicCheckpointIO
from ldm.checkpoint import CheckpointError, load_checkpoint
from ldm.cli.errors import UsageError

#: What ``Trainer.fit(ckpt_path=...)`` needs besides the weights.
TRAINING_STATE_KEYS = ("optimizer_states", "loops")


def _listing(keys: list[str], shown: int = 3) -> str:
    more = f", ... (+{len(keys) - shown})" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def state_dict_mismatch(model: nn.Module, state_dict: Mapping[str, Any]) -> str | None:
    """What keeps ``model.load_state_dict(state_dict, strict=True)`` from working, in one phrase, or None."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    reshaped = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state_dict and isinstance(state_dict[key], Tensor) and state_dict[key].shape != own[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model tensors missing ({_listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors ({_listing(unexpected)})")
    if reshaped:
        problems.append(f"{len(reshaped)} with other shapes ({_listing(reshaped)})")
    return "; ".join(problems) or None


def load_resume_checkpoint(path: str, model: nn.Module, training: bool) -> dict[str, Any]:
    """The checkpoint at ``path`` (from :func:`ldm.checkpoint.load_checkpoint`), after checking that it is a
    Lightning checkpoint of ``model`` (all tensors present with their shapes, unless ``model.strict_loading`` is
    off) and, when ``training``, that it holds the optimizer and loop state a resumed fit needs.

    Raises :class:`UsageError` (one line naming the file and the fix) otherwise.
    """
    try:
        checkpoint = load_checkpoint(path, config_key="-r/--resume")
    except CheckpointError as error:
        raise UsageError(f"-r: {error}") from error
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, Mapping):
        raise UsageError(f"-r {path}: not a Lightning checkpoint (it has no state_dict); to start from these weights "
                         f"use model.params.ckpt_path={path} in a new run.")
    absent = [key for key in TRAINING_STATE_KEYS if key not in checkpoint]
    if training and absent:
        raise UsageError(f"-r {path}: the checkpoint holds weights only (no {' or '.join(absent)}), so training "
                         f"cannot continue from it; start a new run with model.params.ckpt_path={path} instead.")
    if getattr(model, "strict_loading", True):
        mismatch = state_dict_mismatch(model, state_dict)
        if mismatch:
            raise UsageError(f"-r {path}: the checkpoint does not belong to this config's model: {mismatch}.")
    return checkpoint


def preload_resume_checkpoint(trainer: Any, path: str, model: nn.Module, training: bool) -> None:
    """:func:`load_resume_checkpoint`, handed to the trainer's :class:`AtomicCheckpointIO` for Lightning to use."""
    checkpoint = load_resume_checkpoint(path, model, training)
    io = trainer.strategy.checkpoint_io
    if isinstance(io, AtomicCheckpointIO):
        io.preload(path, checkpoint)
