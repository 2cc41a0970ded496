"""Which config ``target``s may be built when the config comes with a model rather than from the user.

A config the user names on the command line (``--config``, ``-b/--base``) is trusted: its ``target`` may be any
import path, as in the original. A config that arrives with a model is not: one found beside a checkpoint
(``sample_diffusion.py -r DIR`` picking up ``DIR/config.yaml``, ``main.py -r`` merging a run's ``configs/*.yaml``,
a classifier's ``diffusion_path`` log directory), one a script falls back to without being told, or one stored
inside a checkpoint. Its targets must pass :func:`screen_target` (before anything is imported) and
:func:`screen_class` (on the imported object):

- the path is a literal string (no ``${...}`` interpolation) under :data:`ALLOWED_PACKAGES`, or one of the few
  names the original configs and ``main.py`` use outside them (:data:`EXTRA_TARGETS`, the ``taming.*`` aliases);
- it names a class, never a function (so ``ldm.util.instantiate_from_config`` is no way around the rule), defined
  in an allowed package (a re-exported ``subprocess.Popen`` is refused), of a kind a config builds: a torch
  module, dataset, optimizer or learning-rate scheduler, a Lightning data module, callback or logger, or one of
  :data:`PLAIN_CLASSES`.

Nested configs (``params.first_stage_config`` ...) are screened the same way: :func:`check_config` walks every
``target`` of a file before anything is built, and :func:`untrusted_configs` makes every
:func:`ldm.util.get_obj_from_str` inside it screen its path, however deep the classes instantiate. The user lifts
both with ``--trust-config`` (:func:`trusting_configs`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import re
import shlex
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ldm import target_screen
from ldm.taming_aliases import TAMING_ALIASES
from ldm.util import ConfigError, get_obj_from_str

#: The command-line flag that trusts configs that came with a model.
TRUST_FLAG = "--trust-config"

#: Packages whose classes a config that came with a model may name.
ALLOWED_PACKAGES = ("ldm", "torch.nn", "torch.optim")

#: Classes outside :data:`ALLOWED_PACKAGES` that the original configs and ``main.py`` name, by their exact path.
EXTRA_TARGETS = frozenset({
    "torchvision.transforms.Resize",
    "torchvision.transforms.CenterCrop",
    "torchvision.transforms.RandomCrop",
    "main.DataModuleFromConfig",
    "main.ImageLogger",
    "main.SetupCallback",
    "main.CUDACallback",
    "main.LearningRateMonitor",
    "pytorch_lightning.callbacks.ModelCheckpoint",
    "pytorch_lightning.callbacks.LearningRateMonitor",
    "pytorch_lightning.loggers.TensorBoardLogger",
    "pytorch_lightning.loggers.CSVLogger",
})

#: Classes of this package that configs name and that are none of the kinds of :func:`_allowed_kinds`: the
#: learning-rate multipliers ``LambdaLR`` calls and the per-sample transforms of the SD 2.x shard configs
#: (``data.params.train.postprocess``).
PLAIN_CLASSES = frozenset({
    "ldm.lr_scheduler.LambdaWarmUpCosineScheduler",
    "ldm.lr_scheduler.LambdaWarmUpCosineScheduler2",
    "ldm.lr_scheduler.LambdaLinearScheduler",
    "ldm.data.laion.AddMask",
    "ldm.data.laion.AddLR",
    "ldm.data.laion.AddBW",
})

#: OmegaConf resolvers an untrusted config may call: they read the environment or move nodes of the config itself.
INERT_RESOLVERS = frozenset({"oc.env", "oc.select", "oc.dict.keys", "oc.dict.values", "oc.deprecated"})
_RESOLVER_CALL = re.compile(r"\$\{\s*([^\s:{}]+)\s*:")

#: The file the configs being built came from, while they are screened (None: trusted).
_SOURCE: ContextVar[str | None] = ContextVar("ldm_untrusted_config_source", default=None)
#: Targets the user named on the command line next to an untrusted file (its ``key=value`` overrides).
_USER_TARGETS: ContextVar[frozenset[str]] = ContextVar("ldm_user_config_targets", default=frozenset())
#: Set by ``--trust-config``: no config is screened.
_TRUST_ALL: ContextVar[bool] = ContextVar("ldm_trust_all_configs", default=False)

_MAX_SHOWN = 120


class UntrustedConfigError(ConfigError):
    """A config that came with a model names a target it may not; the message names it, the file and the flag."""


@contextlib.contextmanager
def untrusted_configs(source: str | Path, user_targets: Iterable[str] = ()) -> Iterator[None]:
    """Screen every config target resolved inside the block as coming from ``source`` (a file name, for the
    message). ``user_targets`` are paths the user named on the command line (overrides), which stay trusted."""
    tokens = (_SOURCE.set(str(source)), _USER_TARGETS.set(frozenset(user_targets)))
    try:
        yield
    finally:
        _USER_TARGETS.reset(tokens[1])
        _SOURCE.reset(tokens[0])


@contextlib.contextmanager
def trusting_configs(trust: bool = True) -> Iterator[None]:
    """``--trust-config``: with ``trust``, nothing inside the block is screened (``untrusted_configs`` and
    ``check_config`` do nothing); without, the block runs as it would."""
    token = _TRUST_ALL.set(_TRUST_ALL.get() or trust)
    try:
        yield
    finally:
        _TRUST_ALL.reset(token)


def untrusted_source() -> str | None:
    """The file whose targets are being screened now, or None when targets are trusted."""
    return None if _TRUST_ALL.get() else _SOURCE.get()


def _shown_path(source: str) -> str:
    return shlex.quote(source) if source.isprintable() else ascii(source)


def _shown_target(target: Any) -> str:
    text = repr(target) if isinstance(target, str) else f"{type(target).__name__} {target!r}"
    return text if len(text) <= _MAX_SHOWN else f"{text[:_MAX_SHOWN]}...'"


def _refusal(target: Any, why: str, source: str, key: str | None, what: str = "config target") -> UntrustedConfigError:
    where = f"{key} in {_shown_path(source)}" if key else _shown_path(source)
    return UntrustedConfigError(
        f"refused {what} {_shown_target(target)} ({where}): {why}; a config that comes with a model may "
        f"name only classes of {', '.join(ALLOWED_PACKAGES)} and the few the original configs use. "
        f"If you trust that file, pass {TRUST_FLAG}"
    )


def _in_allowed_package(path: str) -> bool:
    return any(path == package or path.startswith(f"{package}.") for package in ALLOWED_PACKAGES)


def _is_pinned(path: str) -> bool:
    """Named exactly by the original configs or ``main.py`` (not a package prefix)."""
    return path in EXTRA_TARGETS or path in TAMING_ALIASES


def _foreign_main() -> str | None:
    """The file ``import main`` would load when it is not this project's ``main.py`` (None: ours, or none)."""
    loaded = sys.modules.get("main")
    origin = getattr(loaded, "__file__", None) if loaded is not None else None
    if loaded is None:
        try:
            spec = importlib.util.find_spec("main")
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    if origin is None or Path(origin).resolve() == Path(__file__).resolve().parents[1] / "main.py":
        return None
    return origin


def screen_target(target: Any, source: str, key: str | None = None) -> str:
    """Refuse (:class:`UntrustedConfigError`) a target path of an untrusted config before anything is imported:
    it must be a literal import path in :data:`ALLOWED_PACKAGES`, :data:`EXTRA_TARGETS` or the taming aliases.
    Returns the path; ``key`` (e.g. ``model.params.first_stage_config.target``) is for the message."""
    if not isinstance(target, str):
        raise _refusal(target, "not an import path", source, key)
    if target in _USER_TARGETS.get():
        return target
    if "${" in target:
        raise _refusal(target, "an interpolation, not a literal import path", source, key)
    if target.startswith("main.") and _is_pinned(target) and _foreign_main() is not None:
        raise _refusal(target, f"'main' would be {_foreign_main()!r}, not this project's main.py", source, key)
    if not (_in_allowed_package(target) or _is_pinned(target)):
        raise _refusal(target, f"{target.rsplit('.', 1)[0]!r} is outside the allowed packages", source, key)
    return target


def _allowed_kinds() -> tuple[type, ...]:
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import Logger

    return (torch.nn.Module, torch.utils.data.Dataset, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler,
            pl.LightningDataModule, pl.Callback, Logger)


def screen_class(target: str, obj: Any, source: str, key: str | None = None) -> None:
    """Refuse (:class:`UntrustedConfigError`) what an untrusted target resolved to unless it is a class defined in
    an allowed package (or pinned by name) and of an allowed kind (module docstring)."""
    if target in _USER_TARGETS.get():
        return
    if not inspect.isclass(obj):
        kind = "a function" if callable(obj) else f"a {type(obj).__name__}"
        raise _refusal(target, f"it is {kind}, not a class", source, key)
    if not _is_pinned(target) and not _in_allowed_package(obj.__module__):
        raise _refusal(target, f"the class is defined in {obj.__module__!r}, outside the allowed packages", source,
                       key)
    if target not in PLAIN_CLASSES and f"{obj.__module__}.{obj.__qualname__}" not in PLAIN_CLASSES and not issubclass(
        obj, _allowed_kinds()
    ):
        raise _refusal(target, "the class is no module, dataset, optimizer, scheduler, data module, callback or "
                       "logger", source, key)


def config_targets(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(key, target)`` for every mapping with a ``target`` key in ``config`` (OmegaConf or plain containers),
    at any depth, read without resolving interpolations; e.g. ``("model.params.unet_config.target", "ldm...")``."""
    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=False)
    if isinstance(config, dict):
        for name, value in config.items():
            key = f"{prefix}.{name}" if prefix else str(name)
            if name == "target":
                yield key, value
            else:
                yield from config_targets(value, key)
    elif isinstance(config, list):
        for index, value in enumerate(config):
            yield from config_targets(value, f"{prefix}[{index}]")


def _strings(config: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(key, text)`` of every string value (and mapping key) in plain containers."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for name, value in items:
        key = f"{prefix}[{name}]" if isinstance(config, list) else f"{prefix}.{name}" if prefix else str(name)
        if isinstance(name, str):
            yield key, name
        if isinstance(value, str):
            yield key, value
        else:
            yield from _strings(value, key)


def _check_interpolations(config: Any, source: str) -> None:
    """Refuse any ``${resolver:...}`` in an untrusted config other than those of :data:`INERT_RESOLVERS`: the
    others (``oc.create``, ``oc.decode``, any registered later) can turn text into a config node with a target
    that no walk of the file sees."""
    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=False)
    for key, text in _strings(config):
        for name in _RESOLVER_CALL.findall(text):
            if name not in INERT_RESOLVERS:
                raise _refusal(text, f"the resolver {name!r} can build config nodes from text", source, key,
                               what="interpolation")


def check_config(config: Any, source: str | Path) -> None:
    """Refuse (:class:`UntrustedConfigError`, one line) a config that came with a model from ``source`` if any
    of its targets, at any depth, fails :func:`screen_target` / :func:`screen_class`; nothing is built, and
    nothing outside the allowed packages is imported. Does nothing under ``--trust-config``."""
    if _TRUST_ALL.get():
        return
    source = str(source)
    _check_interpolations(config, source)
    for key, target in config_targets(config):
        path = screen_target(target, source, key)
        if _is_pinned(path) or path in _USER_TARGETS.get():
            continue
        token = _SOURCE.set(None)  # screened here, with the key in the message
        try:
            obj = get_obj_from_str(path)
        except (ConfigError, ImportError):
            continue  # an allowed path that does not resolve runs nothing; building that node reports it
        finally:
            _SOURCE.reset(token)
        screen_class(path, obj, source, key)


target_screen.register(sys.modules[__name__])
