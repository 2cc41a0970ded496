"""``main.py``'s settings checked by declared kind before anything is built: every ``lightning.trainer`` value
against the type ``pytorch_lightning.Trainer`` declares for it (``Literal`` choices, ``int``, ``float``, ``bool``,
``str``, ``None`` and unions of them) and the numeric ones against their range; the data module's ``batch_size`` /
``num_workers`` and ``model.base_learning_rate`` likewise. Each failure is one :class:`UsageError` line naming the
key (and its ``--flag``) and a value that works."""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Trainer

from ldm.cli.errors import UsageError

#: Lowest allowed value of the numeric Trainer arguments (-1 means "no limit" where Lightning says so).
TRAINER_LOWEST: dict[str, float] = {
    "num_nodes": 1, "max_epochs": -1, "min_epochs": 0, "max_steps": -1, "min_steps": 0, "accumulate_grad_batches": 1,
    "check_val_every_n_epoch": 1, "log_every_n_steps": 0, "num_sanity_val_steps": -1, "gradient_clip_val": 0,
    "limit_train_batches": 0, "limit_val_batches": 0, "limit_test_batches": 0, "limit_predict_batches": 0,
    "overfit_batches": 0, "reload_dataloaders_every_n_epochs": 0, "fast_dev_run": 0, "val_check_interval": 0,
}
#: ``(config path, lowest value, whole number?)`` of the other settings main.py relies on.
CONFIG_RANGES: tuple[tuple[str, float, bool], ...] = (
    ("data.params.batch_size", 1, True),
    ("data.params.num_workers", 0, True),
    ("model.base_learning_rate", 0, False),
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fits_annotation(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (a plain YAML value) is allowed by ``annotation``; classes outside the plain YAML types
    (``Accelerator``, ``timedelta``, ...) cannot come from YAML and are matched by ``isinstance``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    if origin is typing.Union:
        return any(fits_annotation(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return _is_number(value)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(fits_annotation(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, Mapping)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _accepted(annotation: Any) -> str:
    """A short text of what ``annotation`` accepts."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return " or ".join(_accepted(arg) for arg in args)
    if origin is typing.Literal:
        return ", ".join(repr(arg) for arg in args)
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def check_trainer_values(trainer: Mapping[str, Any]) -> None:
    """:class:`UsageError` for the first ``lightning.trainer`` value (command line included) that the ``Trainer``
    argument's declared type or its range (:data:`TRAINER_LOWEST`) refuses."""
    parameters = inspect.signature(Trainer.__init__).parameters
    for name, value in trainer.items():
        if name not in parameters:
            continue
        where = f"--{name} {value!r} (lightning.trainer.{name})"
        annotation = parameters[name].annotation
        if not fits_annotation(value, annotation):
            raise UsageError(f"{where} is not accepted by pytorch_lightning.Trainer; expected {_accepted(annotation)}")
        lowest = TRAINER_LOWEST.get(name)
        if lowest is not None and _is_number(value) and (not math.isfinite(value) or value < lowest):
            floor = "-1 (no limit) or a value >= 0" if lowest == -1 else f"a finite value >= {lowest:g}"
            raise UsageError(f"{where} is out of range; pass {floor}, or leave it out for Lightning's default")


def check_config_values(config: DictConfig) -> None:
    """:class:`UsageError` when a setting of :data:`CONFIG_RANGES` present in ``config`` has the wrong type or is
    below its lowest value."""
    for key, lowest, whole in CONFIG_RANGES:
        value = OmegaConf.select(config, key, default=None, throw_on_missing=False)
        if value is None:
            continue
        kind = "a whole number" if whole else "a finite number"
        good = (isinstance(value, int) if whole else _is_number(value)) and not isinstance(value, bool)
        if not good or not math.isfinite(value) or value < lowest or (lowest == 0 and not whole and value == 0):
            bound = f">= {lowest:g}" if whole or lowest else "> 0"
            raise UsageError(f"{key}={value!r} in the config is not {kind} {bound}; set e.g. {key}="
                             f"{max(1, int(lowest)) if whole else 1.0e-4}")
