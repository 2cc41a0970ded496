"""Helpers shared by the configs, the models and the scripts.

The central one is :func:`instantiate_from_config`, which turns a YAML node of the form
``{target: "package.module.Class", params: {...}}`` into an object.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ldm import target_screen
from ldm.ema_optimizer import AdamWwithEMAandWings as AdamWwithEMAandWings
from ldm.parallel_prefetch import parallel_data_prefetch as parallel_data_prefetch
from ldm.taming_aliases import NoTamingEquivalentError, resolve_target

T = TypeVar("T")

#: Config values that stand for "no model here": the first stage itself, or an unconditional model.
SENTINELS = ("__is_first_stage__", "__is_unconditional__")


class ConfigError(ValueError):
    """A config node cannot be turned into an object; the message names the node and the fix.

    The subclasses below also derive from the built-in exception type of their situation, so code that catches
    ``KeyError`` / ``ModuleNotFoundError`` / ``AttributeError`` / ``TypeError`` catches them.
    """


class MissingTargetError(ConfigError, KeyError):
    """The node has no ``target`` key (also a ``KeyError``)."""

    __str__ = BaseException.__str__  # the plain message, not KeyError's quoted repr


class TargetImportError(ConfigError, ModuleNotFoundError):
    """The ``target``'s module cannot be imported (also a ``ModuleNotFoundError``)."""


class TargetAttributeError(ConfigError, AttributeError):
    """The ``target``'s module lacks the named attribute (also an ``AttributeError``)."""


class ParamsError(ConfigError, TypeError):
    """``params`` has keys the target does not accept, or lacks required ones (also a ``TypeError``)."""


class SettingError(ConfigError, AssertionError):
    """A constructor/config setting is out of range (also an ``AssertionError``)."""


class UnsupportedSettingError(ConfigError, NotImplementedError):
    """A setting names a variant that does not exist (also a ``NotImplementedError``)."""


def autocast(f: Callable[..., T]) -> Callable[..., T]:
    """Decorator: call ``f`` inside CUDA autocast, enabled, with the current autocast dtype and cache setting.

    Without CUDA autocast cannot apply (torch would warn and disable it), so ``f`` is called as is.
    """

    def under_autocast(*args: Any, **kwargs: Any) -> T:
        dtype = torch.get_autocast_dtype("cuda")
        on = torch.cuda.is_available()
        with torch.autocast("cuda", enabled=on, dtype=dtype, cache_enabled=torch.is_autocast_cache_enabled()):
            return f(*args, **kwargs)

    return under_autocast


def exists(x: Any) -> bool:
    """Whether ``x`` is not None."""
    return x is not None


def default(val: T | None, d: T | Callable[[], T]) -> T:
    """``val`` unless it is None, else ``d`` (called first if it is a function)."""
    if val is not None:
        return val
    return d() if inspect.isfunction(d) else d


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one: ``(B, ...) -> (B,)``."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def count_params(model: torch.nn.Module, verbose: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if verbose:
        import logging

        logging.getLogger(__name__).info(
            "%s has %.2f M params.", model.__class__.__name__, total * 1.0e-6
        )
    return total


def ismap(x: Any) -> bool:
    """True for a ``(B, C, H, W)`` tensor with more than 3 channels (a segmentation-style map)."""
    return isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] > 3


def isimage(x: Any) -> bool:
    """True for a ``(B, C, H, W)`` tensor with 1 or 3 channels."""
    return isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] in (1, 3)


def log_txt_as_img(wh: tuple[int, int], xc: list[str], size: int = 10) -> torch.Tensor:
    """Render captions as images, ``(B, 3, H, W)`` in [-1, 1], for image logs of text conditionings."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = wh
    font = ImageFont.load_default()
    chars_per_line = max(1, int(40 * (width / 256)))
    images = []
    for caption in xc:
        canvas = Image.new("RGB", (width, height), color="white")
        draw = ImageDraw.Draw(canvas)
        lines = "\n".join(
            caption[start : start + chars_per_line] for start in range(0, len(caption), chars_per_line)
        )
        draw.text((0, 0), lines, fill="black", font=font)
        array = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        images.append(torch.from_numpy(array))
    return torch.stack(images)


def get_obj_from_str(string: str, reload: bool = False) -> Any:
    """Import ``"package.module.Name"`` and return ``Name``.

    A ``taming.*`` path resolves through :data:`ldm.taming_aliases.TAMING_ALIASES` when taming-transformers is
    not installed. Raises :class:`ConfigError` naming the path and the part that failed to resolve. Inside
    :func:`ldm.config_trust.untrusted_configs` the path is screened before it is imported, and what it names after.
    """
    screener = target_screen.screener
    source, named = (screener.untrusted_source() if screener is not None else None), string
    if source is not None:
        screener.screen_target(named, source)
    if not isinstance(string, str) or "." not in string:
        raise TargetImportError(
            f"target {string!r} is not an import path; write it as 'package.module.ClassName'."
        )
    try:
        string = resolve_target(string)
    except NoTamingEquivalentError as error:
        raise TargetImportError(str(error)) from error
    module_name, attr = string.rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise TargetImportError(
            f"target {string!r}: module {module_name!r} cannot be imported ({error}). "
            "Check the spelling of 'target' or install the package that provides it."
        ) from error
    if reload:
        module = importlib.reload(module)
    try:
        obj = getattr(module, attr)
    except AttributeError as error:
        raise TargetAttributeError(
            f"target {string!r}: module {module_name!r} has no attribute {attr!r}. "
            "Check the class name in 'target'."
        ) from error
    if source is not None:
        screener.screen_class(named, obj, source)
    return obj


def _as_plain_params(params: Any, where: str) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, DictConfig):
        return {str(k): params[k] for k in params}
    if isinstance(params, Mapping):
        return dict(params)
    raise ParamsError(f"{where}: 'params' must be a mapping of keyword arguments, got {type(params).__name__}.")


def _check_params(obj: Any, params: Mapping[str, Any], where: str) -> None:
    """Raise a :class:`ConfigError` naming every ``params`` key the callable does not accept."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    accepted = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ParamsError(
            f"{where}: unknown key(s) {unknown} in 'params'; {getattr(obj, '__name__', obj)} accepts "
            f"{sorted(accepted)}. Remove or rename the key(s)."
        )
    missing = [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in params
    ]
    if missing:
        raise ParamsError(f"{where}: required key(s) {missing} missing from 'params'.")


def instantiate_from_config(config: Any, name: str | None = None) -> Any:
    """Build ``target(**params)`` from a config node.

    The strings ``__is_first_stage__`` and ``__is_unconditional__`` stand for "no model" and return None.
    ``name`` (for example ``model.params.first_stage_config``) is used in error messages; it defaults to the
    target's path.
    """
    if isinstance(config, str) and config in SENTINELS:
        return None
    if not isinstance(config, (Mapping, DictConfig)):
        raise MissingTargetError(
            f"{name or 'config'}: expected a mapping with a 'target' key, got {config!r}."
        )
    if "target" not in config:
        raise MissingTargetError(
            f"{name or 'config'}: expected key 'target' to instantiate (keys present: {sorted(config.keys())}). "
            "Add 'target: package.module.ClassName'."
        )
    target = config["target"]
    where = name or f"config with target {target!r}"
    obj = get_obj_from_str(target)
    params = _as_plain_params(config.get("params", None), where)
    _check_params(obj, params, where)
    return obj(**params)


def to_container(config: Any) -> Any:
    """OmegaConf node → plain Python containers (anything else is returned unchanged)."""
    if OmegaConf.is_config(config):
        return OmegaConf.to_container(config, resolve=True)
    return config
