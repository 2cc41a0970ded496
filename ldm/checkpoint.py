"""Safe checkpoint IO: read `.ckpt`/`.pt`/`.pth` pickles without running code, read/write `.safetensors`,
unwrap Lightning checkpoints, swap in EMA weights and load state dicts with a clear report.

Pickles are read by our own restricted unpickler (:mod:`ldm.checkpoint_unpickler`), never by ``pickle`` or
``torch.load``: it can only build plain data, tensors that view the file's own storages, and the few
allow-listed globals (:mod:`ldm.checkpoint_allowlist`), each rebuilt by our reconstructor. OmegaConf
hyper-parameters come back as plain ``dict``/``list`` without interpolation (:mod:`ldm.checkpoint_config`).
What a file may make us allocate is bounded by ``max_expansion`` times its size (:mod:`ldm.checkpoint_guard`,
:mod:`ldm.checkpoint_graph`). Anything else is refused with one line that says what the file asked for;
docs/security.md lists the rules and their tests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import omegaconf
import safetensors
import safetensors.torch
import torch
from torch import Tensor

from ldm.atomic_write import atomic_file, atomic_path
from ldm.checkpoint_allowlist import ALLOWED, ModelCheckpointStub, classify
from ldm.checkpoint_archive import read_torch_file
from ldm.checkpoint_errors import (
    CheckpointError,
    CheckpointExpansionError,
    CheckpointFault,
    ExpansionFault,
    ForbiddenGlobals,
    UnsafeCheckpointError,
    shell_word,
    shown,
    shown_path,
    shown_repr,
)
from ldm.checkpoint_graph import finish
from ldm.checkpoint_guard import DEFAULT_MAX_EXPANSION, ExpansionBudget

__all__ = [
    "CheckpointError", "CheckpointExpansionError", "DEFAULT_MAX_EXPANSION", "ModelCheckpointStub", "SAFE_GLOBALS",
    "UnsafeCheckpointError", "apply_state_dict", "load_checkpoint", "load_state_dict_file", "load_torch_object",
    "state_dict_of",
]

logger = logging.getLogger(__name__)

PathLike = str | Path

#: Prefix of the LitEma buffers in a checkpoint (see tests/refdata/manifests/NOTES.md).
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")
UNET_PREFIX = "model.diffusion_model."
#: Saved by 2022 transformers, a non-persistent buffer today.
CLIP_POSITION_IDS = "text_model.embeddings.position_ids"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
#: Every global name a checkpoint pickle may use (what each may do: :data:`ldm.checkpoint_allowlist.ALLOWED`).
SAFE_GLOBALS = frozenset(ALLOWED)
#: How each kind of refused global is described (:func:`ldm.checkpoint_allowlist.classify`).
_REFUSAL_REASONS = {
    "code": "can run code",
    "memory": "would make memory the file does not hold",
    "legacy": "a legacy class",
    "unknown": "not known to be harmless",
}
_LISTED = 8


def _convert_hint(path: Path) -> str:
    source, target = shell_word(path), shell_word(path.with_suffix(".safetensors"))
    if source is None or target is None:
        return (
            "It looks like a legacy checkpoint: if you trust where it comes from, give it a printable name and "
            "convert it once in a trusted environment with scripts/convert_checkpoint.py --unsafe-trust-pickle."
        )
    return (
        "It looks like a legacy checkpoint: if you trust where it comes from, convert it once in a trusted "
        "environment and then load the .safetensors file: "
        f"python scripts/convert_checkpoint.py {source} {target} --unsafe-trust-pickle"
    )


def _refusal(path: Path, names: list[str], in_checkpoint: bool) -> UnsafeCheckpointError:
    """One line: what the file asked for and why each is refused; the unsafe conversion only for legacy classes."""
    kinds = [classify(name) for name in names]
    listed = ", ".join(f"{name} ({_REFUSAL_REASONS[kind]})" for name, kind in zip(names[:_LISTED], kinds))
    if len(names) > _LISTED:
        listed += f", ... (+{len(names) - _LISTED} more)"
    benign = in_checkpoint and all(kind == "legacy" for kind in kinds)
    if "code" in kinds or "memory" in kinds:
        advice = (
            "A model checkpoint never needs these: treat the file as hostile and never unpickle it with full "
            "Python."
        )
    elif not in_checkpoint:
        advice = "It is not a torch.save checkpoint."
    elif benign:
        advice = _convert_hint(path)
    else:
        advice = (
            "Checkpoints hold tensors, plain containers, numpy scalars, OmegaConf configs and Lightning's "
            "ModelCheckpoint; if you made this file, save plain data instead (torch.save(model.state_dict(), ...) "
            "or a .safetensors file)."
        )
    message = (
        f"refusing to load {shown_path(path)}: its pickle asks for {listed}. Nothing in the file was executed. "
        f"{advice}"
    )
    return UnsafeCheckpointError(message, names, benign)


def _check_exists(path: Path, config_key: str | None) -> None:
    where = f" (from `{config_key}`)" if config_key else ""
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {shown_path(path)}{where} is a directory; name the file in it")
    if path.exists() and not path.is_file():
        raise CheckpointError(f"checkpoint path {shown_path(path)}{where} is not a regular file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {shown_path(path)}{where}; check the path.")


def is_safetensors(path: Path) -> bool:
    """By suffix, or by content: 8-byte little-endian header length followed by a JSON object."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def load_torch_object(path: PathLike, *, max_expansion: float | None = DEFAULT_MAX_EXPANSION) -> Any:
    """Whatever a ``torch.save`` pickle at ``path`` holds (a dict, a tuple of tensors, ...), through the same
    restricted unpickler and allocation bound as :func:`load_checkpoint`; for small weight and statistics files
    that are not checkpoints (LPIPS heads, CLIP statistics, plain state dicts)."""
    path = Path(path)
    _check_exists(path, None)
    budget = ExpansionBudget(path.stat().st_size, max_expansion)
    try:
        with torch.device("cpu"):  # a caller's default-device context (e.g. a meta build) must not reach the loader
            raw, storages = read_torch_file(path, budget)
            obj = finish(raw, budget, storages.owns)
    except ForbiddenGlobals as refusal:
        raise _refusal(path, refusal.names, refusal.in_checkpoint) from None
    except ExpansionFault as fault:
        raise CheckpointExpansionError(
            f"refusing to load {shown_path(path)}: {fault}. A checkpoint stores the bytes of its tensors, so the "
            "file is malformed or hostile; if you trust it, load it with max_expansion=None "
            "(scripts/convert_checkpoint.py: --allow-large-expansion)."
        ) from None
    except CheckpointFault as fault:
        raise CheckpointError(f"cannot read checkpoint {shown_path(path)}: {fault}") from None
    except Exception as error:  # zipfile, mmap and OS errors on damaged files
        raise CheckpointError(
            f"cannot read checkpoint {shown_path(path)}: the file is corrupt, truncated or not a PyTorch checkpoint "
            f"({type(error).__name__}: {shown(error)})"
        ) from None
    return obj


def _load_pickle(path: Path, max_expansion: float | None) -> dict[str, Any]:
    obj = load_torch_object(path, max_expansion=max_expansion)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {shown_path(path)} holds a {type(obj).__name__}, expected a dict of tensors"
        )
    return dict(obj)


def _load_safetensors(path: Path) -> dict[str, Any]:
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"cannot read safetensors file {shown_path(path)}: corrupt or truncated ({shown(error)})"
        ) from error
    return {"state_dict": tensors, "metadata": metadata}


def load_checkpoint(
    path: PathLike, *, config_key: str | None = None, max_expansion: float | None = DEFAULT_MAX_EXPANSION
) -> dict[str, Any]:
    """The whole checkpoint object, read safely on the CPU.

    A pickle (``.ckpt``/``.pt``/``.pth``) gives its top-level dict (a Lightning checkpoint: ``state_dict``,
    ``global_step``, ...); a ``.safetensors`` file gives ``{"state_dict": tensors, "metadata": {str: str}}``.
    ``config_key`` names where the path came from, for the error message when the file is missing.

    A pickle may make the loader hold, and its result may expand to, at most
    ``max_expansion * file_size + 1 MiB`` bytes (tensor bytes counted as ``numel * itemsize`` per occurrence);
    ``max_expansion=None`` lifts that bound for a trusted file. Refusals raise :class:`UnsafeCheckpointError`
    (a global outside the allow-list), :class:`CheckpointExpansionError` (the bound) or
    :class:`CheckpointError` (anything else that is not a readable checkpoint), each as one line.
    """
    path = Path(path)
    _check_exists(path, config_key)
    return _load_safetensors(path) if is_safetensors(path) else _load_pickle(path, max_expansion)


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
        raise CheckpointError(
            f"{shown_path(path)}: `state_dict` is a {type(state_dict).__name__}, expected a dict of tensors"
        )
    odd_keys = [k for k in state_dict if not isinstance(k, str)]
    if odd_keys:
        raise CheckpointError(
            f"{shown_path(path)} is not a state dict: key {shown_repr(odd_keys[0])} is not a string"
        )
    bad = next((k for k, v in state_dict.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        keys = sorted(shown_repr(key, 40) for key in checkpoint)[:8]
        raise CheckpointError(
            f"{shown_path(path)} is not a state dict: entry {shown_repr(bad)} is a "
            f"{type(state_dict[bad]).__name__}; top-level keys are [{', '.join(keys)}]"
        )
    state_dict = dict(state_dict)
    if use_ema and not _has_ema_weights(state_dict):
        logger.warning("%s has no EMA weights (model_ema.*); using its regular weights", path)
    elif use_ema:
        total = sum(k.startswith(UNET_PREFIX) for k in state_dict)
        logger.info("%s: swapped in EMA weights for %d of %d UNet tensors", path, swap_in_ema(state_dict), total)
    return state_dict


def load_state_dict_file(
    path: PathLike,
    *,
    use_ema: bool = False,
    config_key: str | None = None,
    max_expansion: float | None = DEFAULT_MAX_EXPANSION,
) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (Lightning ``state_dict`` unwrapped), optionally with EMA UNet weights
    (see :func:`state_dict_of`; ``max_expansion`` as in :func:`load_checkpoint`)."""
    checkpoint = load_checkpoint(path, config_key=config_key, max_expansion=max_expansion)
    return state_dict_of(checkpoint, path, use_ema=use_ema)


def global_step_of(checkpoint: Mapping[str, Any]) -> int | None:
    """``global_step`` of a Lightning checkpoint, or of a converted one's safetensors metadata; None if absent
    or not a whole number."""
    step = checkpoint.get("global_step")
    metadata = checkpoint.get("metadata")
    if step is None and isinstance(metadata, Mapping):
        step = metadata_values(metadata).get("global_step")
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if step is None or isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        if step is not None:
            logger.warning("ignoring a global_step that is not a whole number: %s", shown_repr(step, 40))
        return None
    return int(step)


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

    Keys starting with any ``ignore_keys`` prefix (a single string is one prefix) are dropped first
    (``init_from_ckpt``'s ``ignore_keys``), then the tolerated extras (EMA buffers, CLIP ``position_ids``, a
    standalone VAE's ``loss.*``) the module lacks.
    A shape difference raises ``ValueError`` naming the first such key and both shapes. Missing/unexpected keys
    are logged as one line; with ``strict`` any left (other than missing ones under an ignored prefix) raise.
    """
    if isinstance(ignore_keys, str):  # ignore_keys=first_stage_model in a config: one prefix, not its characters
        logger.info("%s: ignore_keys %r is one prefix", what, ignore_keys)
        ignore_keys = [ignore_keys]
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
    """Write tensors to ``path`` atomically (contiguous; tensors sharing storage are copied, as safetensors
    requires)."""
    seen: set[int] = set()
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        tensors[key] = value.clone() if storage in seen else value
        seen.add(storage)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})


def metadata_strings(checkpoint: Mapping[str, Any]) -> dict[str, str]:
    """JSON strings of the checkpoint's top-level plain values (``global_step``, ``epoch``, hyper-parameters).

    OmegaConf values (present only after a trusted full unpickling) are stored unresolved: an interpolation
    such as ``${oc.env:NAME}`` stays that text.
    """
    strings = {}
    for key, value in checkpoint.items():
        if key == "state_dict":
            continue
        try:
            if isinstance(value, (omegaconf.DictConfig, omegaconf.ListConfig)):
                value = omegaconf.OmegaConf.to_container(value, resolve=False)
            strings[key] = json.dumps(value)
        except (TypeError, ValueError, RecursionError, omegaconf.errors.OmegaConfBaseException):
            logger.info("not kept in the safetensors metadata (not a plain value): %s", shown(key))
    return strings


def metadata_values(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of :func:`metadata_strings` (strings that are not JSON stay strings; ``format`` is dropped)."""
    values = {}
    for key, text in metadata.items():
        if key == "format":
            continue
        try:
            values[key] = json.loads(text)
        except (ValueError, TypeError, RecursionError):  # not JSON, too deep, or a number too long to read
            values[key] = text
    return values


def save_checkpoint(path: PathLike, state_dict: Mapping[str, Tensor], **extra: Any) -> None:
    """Write a Lightning-layout checkpoint ``{"state_dict": ..., **extra}`` (e.g. ``global_step``), atomically."""
    with atomic_file(path) as handle:
        torch.save({"state_dict": dict(state_dict), **extra}, handle)
