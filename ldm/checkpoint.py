"""Safe checkpoint IO: read `.ckpt`/`.pt`/`.pth` pickles without running code, read/write `.safetensors`,
unwrap Lightning checkpoints, swap in EMA weights and load state dicts with a clear report.

Pickles are read with ``torch.load(weights_only=True)`` and an explicit allow-list of the harmless globals
that real Lightning / Stable Diffusion v1 checkpoints reference (:data:`SAFE_GLOBALS`). Anything else is
refused before it can run, and the error says how to convert the file (``scripts/convert_checkpoint.py``).
"""

from __future__ import annotations

import _codecs
import json
import logging
import pickle
import typing
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy.dtypes
import omegaconf
import safetensors
import safetensors.torch
import torch
from numpy._core.multiarray import scalar as numpy_scalar
from torch import Tensor

logger = logging.getLogger(__name__)

PathLike = str | Path

#: Prefix of the LitEma buffers in a checkpoint (see tests/refdata/manifests/NOTES.md).
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")
UNET_PREFIX = "model.diffusion_model."
#: Saved by 2022 transformers, a non-persistent buffer today.
CLIP_POSITION_IDS = "text_model.embeddings.position_ids"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read (corrupt, truncated, not a checkpoint, no state dict)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asks for a global outside the allow-list; nothing in it was executed."""

    def __init__(self, message: str, globals_: list[str]):
        super().__init__(message)
        self.globals = globals_


class ModelCheckpointStub:
    """Inert stand-in for ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``.

    Lightning 1.x checkpoints (Stable Diffusion v1) use that class as a key of ``checkpoint["callbacks"]``;
    loading it needs no Lightning and runs none of its code.
    """


def _numpy_dtype_classes() -> list[type]:
    """numpy 2 pickles a scalar's dtype with its class (``numpy.dtypes.Float64DType``, ...)."""
    names = (
        "Bool Int8 Int16 Int32 Int64 UInt8 UInt16 UInt32 UInt64 Float16 Float32 Float64 LongDouble Complex64 "
        "Complex128 CLongDouble Long ULong LongLong ULongLong"
    ).split()
    return [getattr(numpy.dtypes, f"{name}DType") for name in names]


def _omegaconf_classes() -> list[type]:
    nodes = omegaconf.nodes
    return [
        omegaconf.DictConfig,
        omegaconf.ListConfig,
        omegaconf.base.ContainerMetadata,
        omegaconf.base.Metadata,
        nodes.AnyNode,
        nodes.StringNode,
        nodes.IntegerNode,
        nodes.FloatNode,
        nodes.BooleanNode,
    ]


#: Everything a safe load accepts beyond torch's own tensor/storage defaults.
SAFE_GLOBALS: list[Any] = [
    OrderedDict,
    defaultdict,
    dict,
    list,
    int,
    typing.Any,
    torch._utils._rebuild_tensor_v2,
    torch.HalfStorage,
    torch.FloatStorage,
    torch.DoubleStorage,
    torch.BFloat16Storage,
    torch.IntStorage,
    torch.LongStorage,
    torch.ShortStorage,
    torch.CharStorage,
    torch.ByteStorage,
    torch.BoolStorage,
    (ModelCheckpointStub, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    (ModelCheckpointStub, "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
    numpy_scalar,
    (numpy_scalar, "numpy.core.multiarray.scalar"),
    numpy.dtype,
    *_numpy_dtype_classes(),
    _codecs.encode,
    *_omegaconf_classes(),
]


def _convert_hint(path: Path) -> str:
    return (
        f"If you trust where the file comes from, convert it once in a trusted environment: "
        f"`python scripts/convert_checkpoint.py {path} {path.with_suffix('.safetensors')} --unsafe-trust-pickle`, "
        "then load the .safetensors file."
    )


def _check_exists(path: Path, config_key: str | None) -> None:
    if not path.is_file():
        where = f" (from `{config_key}`)" if config_key else ""
        raise FileNotFoundError(f"checkpoint file not found: {path}{where}; check the path.")


def is_safetensors(path: Path) -> bool:
    """By suffix, or by content: 8-byte little-endian header length followed by a JSON object."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _unsafe_globals_in(path: Path, error: Exception) -> list[str]:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (non-zip) files: fall back to the name in torch's message
        found = []
    if found:
        return found
    words = str(error).replace("`", " ").split()
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == "GLOBAL"] or ["<unknown>"]


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise CheckpointError(f"cannot read checkpoint {path}: corrupt or not a checkpoint ({error})") from error
        names = _unsafe_globals_in(path, error)
        raise UnsafeCheckpointError(
            f"refusing to load {path}: its pickle asks for {', '.join(names)}, which is not on the allow-list of "
            "harmless globals (tensors, storages, OrderedDict, numpy scalars/dtypes, Lightning's ModelCheckpoint, "
            f"OmegaConf containers). Nothing in the file was executed. {_convert_hint(path)}",
            names,
        ) from None
    except Exception as error:  # torch.load fails on garbage bytes with many exception types
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt, truncated or not a PyTorch checkpoint ({error})"
        ) from error
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    return dict(obj)


def _load_safetensors(path: Path) -> dict[str, Any]:
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read safetensors file {path}: corrupt or truncated ({error})") from error
    return {"state_dict": tensors, "metadata": metadata}


def load_checkpoint(path: PathLike, *, config_key: str | None = None) -> dict[str, Any]:
    """The whole checkpoint object, read safely on the CPU.

    A pickle (``.ckpt``/``.pt``/``.pth``) gives its top-level dict (a Lightning checkpoint: ``state_dict``,
    ``global_step``, ...); a ``.safetensors`` file gives ``{"state_dict": tensors, "metadata": {str: str}}``.
    ``config_key`` names where the path came from, for the error message when the file is missing.
    """
    path = Path(path)
    _check_exists(path, config_key)
    return _load_safetensors(path) if is_safetensors(path) else _load_pickle(path)


def ema_key(key: str) -> str:
    """LitEma buffer name of a UNet parameter: ``model.diffusion_model.a.0.b`` -> ``model_ema.diffusion_modela0b``."""
    return EMA_PREFIX + key.removeprefix("model.").replace(".", "")


def swap_in_ema(state_dict: dict[str, Tensor]) -> int:
    """Replace every ``model.diffusion_model.*`` weight by its EMA copy, in place; returns how many were swapped.

    The ``model_ema.*`` entries stay: a model built with ``use_ema`` loads them into its own EMA (so its
    ``ema_scope`` swaps in the same weights); :func:`apply_state_dict` drops them for a model without EMA.
    """
    swapped = 0
    for key in [k for k in state_dict if k.startswith(UNET_PREFIX)]:
        ema = state_dict.get(ema_key(key))
        if ema is not None:
            state_dict[key] = ema
            swapped += 1
    return swapped


def _has_ema_weights(state_dict: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(EMA_PREFIX) and k not in EMA_BOOKKEEPING for k in state_dict)


def state_dict_of(
    checkpoint: Mapping[str, Any], path: PathLike = "<checkpoint>", *, use_ema: bool = False
) -> dict[str, Tensor]:
    """The tensors of a checkpoint: ``checkpoint["state_dict"]`` (Lightning) or the checkpoint itself (bare dict).

    With ``use_ema`` every ``model.diffusion_model.X`` is replaced by ``model_ema.<diffusion_model + X without
    dots>`` when the checkpoint has EMA weights; the log says how many were swapped.
    """
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{path}: `state_dict` is a {type(state_dict).__name__}, expected a dict of tensors")
    bad = next((k for k, v in state_dict.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        raise CheckpointError(
            f"{path} is not a state dict: entry {bad!r} is a {type(state_dict[bad]).__name__}; "
            f"top-level keys are {sorted(checkpoint)[:8]}"
        )
    state_dict = dict(state_dict)
    if use_ema and not _has_ema_weights(state_dict):
        logger.warning("%s has no EMA weights (model_ema.*); using its regular weights", path)
    elif use_ema:
        total = sum(k.startswith(UNET_PREFIX) for k in state_dict)
        logger.info("%s: swapped in EMA weights for %d of %d UNet tensors", path, swap_in_ema(state_dict), total)
    return state_dict


def load_state_dict_file(
    path: PathLike, *, use_ema: bool = False, config_key: str | None = None
) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (Lightning ``state_dict`` unwrapped), optionally with EMA UNet weights
    (see :func:`state_dict_of`)."""
    return state_dict_of(load_checkpoint(path, config_key=config_key), path, use_ema=use_ema)


def global_step_of(checkpoint: Mapping[str, Any]) -> int | None:
    """``global_step`` of a Lightning checkpoint, or of a converted one's safetensors metadata; None if absent."""
    step = checkpoint.get("global_step", metadata_values(checkpoint.get("metadata", {})).get("global_step"))
    return None if step is None else int(step)


@dataclass
class LoadReport:
    """What :func:`apply_state_dict` did: keys the module lacked in the file, extra file keys, dropped keys."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    tolerated: list[str] = field(default_factory=list)


def _tolerated(key: str, own: Mapping[str, Tensor]) -> bool:
    """Extra keys real checkpoints carry that a module may legitimately lack (manifests/NOTES.md), and the fixed
    ``logvar`` that some forks' checkpoints store (ControlNet)."""
    if key in own:
        return False
    if key in EMA_BOOKKEEPING or key.endswith(CLIP_POSITION_IDS) or key == "logvar":
        return True
    if key.startswith(EMA_PREFIX):
        return not any(k.startswith(EMA_PREFIX) for k in own)
    if key.startswith("loss."):
        return not any(k.startswith("loss.") for k in own)
    return False


def _summary(names: list[str], label: str, shown: int = 3) -> str:
    more = f", ... (+{len(names) - shown})" if len(names) > shown else ""
    return f"{len(names)} {label}" + (f" ({', '.join(names[:shown])}{more})" if names else "")


def apply_state_dict(
    module: torch.nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    ignore_keys: Iterable[str] = (),
    strict: bool = False,
    what: str = "model",
) -> LoadReport:
    """Load ``state_dict`` into ``module`` and report what did not match.

    Keys starting with any ``ignore_keys`` prefix are dropped first (``init_from_ckpt``'s ``ignore_keys``), then the
    tolerated extras (EMA buffers, CLIP ``position_ids``, a standalone VAE's ``loss.*``) the module lacks.
    A shape difference raises ``ValueError`` naming the first such key and both shapes. Missing/unexpected keys
    are logged as one line; with ``strict`` any left (other than missing ones under an ignored prefix) raise.
    """
    prefixes = tuple(ignore_keys)
    own = module.state_dict()
    report = LoadReport()
    kept: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if prefixes and key.startswith(prefixes):
            report.ignored.append(key)
        elif _tolerated(key, own):
            report.tolerated.append(key)
        else:
            kept[key] = value
    for key, value in kept.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f"{what}: checkpoint tensor {key!r} has shape {tuple(value.shape)} but the model expects "
                f"{tuple(own[key].shape)}; the config does not match the checkpoint (check the model's config "
                "parameters, or pass the key's prefix in ignore_keys to skip it)"
            )
    result = module.load_state_dict(kept, strict=False)
    report.missing, report.unexpected = list(result.missing_keys), list(result.unexpected_keys)
    line = (
        f"{what}: loaded {len(kept) - len(report.unexpected)} tensors; {_summary(report.missing, 'missing')}, "
        f"{_summary(report.unexpected, 'unexpected')}, {len(report.ignored)} ignored, "
        f"{len(report.tolerated)} tolerated extras"
    )
    logger.info(line)
    unexplained = [k for k in report.missing if not (prefixes and k.startswith(prefixes))]
    if strict and (unexplained or report.unexpected):
        raise ValueError(f"strict load failed: {line}; the checkpoint does not belong to this config")
    return report


def save_safetensors(
    path: PathLike, state_dict: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write tensors to ``path`` (contiguous; tensors sharing storage are copied, as safetensors requires)."""
    seen: set[int] = set()
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        tensors[key] = value.clone() if storage in seen else value
        seen.add(storage)
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt", **(metadata or {})})


def metadata_strings(checkpoint: Mapping[str, Any]) -> dict[str, str]:
    """JSON strings of the checkpoint's top-level plain values (``global_step``, ``epoch``, hyper-parameters)."""
    strings = {}
    for key, value in checkpoint.items():
        if key == "state_dict":
            continue
        if isinstance(value, (omegaconf.DictConfig, omegaconf.ListConfig)):
            value = omegaconf.OmegaConf.to_container(value)
        try:
            strings[key] = json.dumps(value)
        except (TypeError, ValueError):
            logger.info("not kept in the safetensors metadata (not a plain value): %s", key)
    return strings


def metadata_values(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of :func:`metadata_strings` (strings that are not JSON stay strings; ``format`` is dropped)."""
    values = {}
    for key, text in metadata.items():
        if key == "format":
            continue
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values


def save_checkpoint(path: PathLike, state_dict: Mapping[str, Tensor], **extra: Any) -> None:
    """Write a Lightning-layout checkpoint ``{"state_dict": ..., **extra}`` (e.g. ``global_step``)."""
    torch.save({"state_dict": dict(state_dict), **extra}, path)
