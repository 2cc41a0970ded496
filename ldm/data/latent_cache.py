"""A latent cache for stage-2 training: the frozen first stage's (and frozen conditioner's) outputs, computed once.

Layout of a cache folder (written by :func:`write_latent_cache`, i.e. ``scripts/cache_latents.py``):

- ``index.json``: the settings (``num_samples``, ``shard_size``, ``dtype``, ``hflip``, ``cond_key``, ...), written
  first; a second run with the same settings resumes, other settings are refused.
- ``shard-00000.safetensors``, ...: samples ``[k·N, (k+1)·N)`` of the dataset, N = ``shard_size``. Tensors
  ``moments`` ``(N, 2C, h, w)`` (``[mean, logvar]`` of a KL first stage) or ``z`` ``(N, C, h, w)`` (VQ / identity
  first stages), ``moments_flipped`` / ``z_flipped`` of the mirrored images with ``hflip``, ``cond`` ``(N, ...)``
  with a frozen conditioner; metadata ``samples``: a JSON list with each sample's plain fields (caption, class
  label, file name ...). Each shard is written atomically, so a present shard is a finished one.
- ``uncond.safetensors``: tensor ``uncond`` ``(1, ...)`` = τ(v) of the unconditional input v, metadata ``value``
  (v as JSON), when conditionings are cached and v is known (``""`` for captions).

:class:`LatentCacheDataset` reads it back as dicts with the batch keys of
:mod:`ldm.models.diffusion.cached_inputs` plus the plain fields.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ldm.atomic_write import atomic_file
from ldm.checkpoint import save_safetensors
from ldm.models.diffusion import cached_inputs as keys
from ldm.models.diffusion.denoising_diffusion import images_channels_first
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import ConfigError, SettingError, UnsupportedSettingError

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
UNCOND_FILE = "uncond.safetensors"
FORMAT = "ldm-latent-cache/1"
#: Shards kept open (memory-mapped) at once by one reader process.
OPEN_SHARDS = 16


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


# --------------------------------------------------------------------------------------------------------
# The index: what a cache holds
# --------------------------------------------------------------------------------------------------------


@dataclass
class CacheIndex:
    """The settings of a cache (``index.json``). ``source`` identifies the model and data it was made from."""

    num_samples: int
    shard_size: int
    dtype: str = "float32"
    hflip: bool = False
    first_stage_key: str = "image"
    cond_key: str | None = None
    cond: bool = False
    uncond: bool = False
    source: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.shard_size)

    def shard_rows(self, k: int) -> range:
        """The dataset indices of shard ``k``."""
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.num_samples))

    @classmethod
    def read(cls, root: str | Path) -> CacheIndex:
        path = Path(root) / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no latent cache index; create the cache with scripts/cache_latents.py")
        values = json.loads(path.read_text())
        if values.get("format") != FORMAT:
            raise ConfigError(f"{path}: format {values.get('format')!r} is not {FORMAT!r}; re-create the cache")
        return cls(**values)

    def write(self, root: Path) -> None:
        with atomic_file(root / INDEX_FILE) as handle:
            handle.write(json.dumps(asdict(self), indent=1, sort_keys=True).encode())

    def missing_shards(self, root: Path) -> list[int]:
        return [k for k in range(self.num_shards) if not (root / shard_name(k)).is_file()]


def _settings_conflict(old: CacheIndex, new: CacheIndex) -> list[str]:
    """``name: old vs new`` for every setting in which two indexes differ."""
    a, b = asdict(old), asdict(new)
    return [f"{name}: {a[name]!r} vs {b[name]!r}" for name in a if a[name] != b[name]]


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------


def caches_conditioning(model: Any) -> bool:
    """Whether the model's conditioning can be cached: a conditional model with a frozen cond stage."""
    conditional = model.model.conditioning_key is not None and not model.force_null_conditioning
    return conditional and model.cond_stage_model is not None and not model.cond_stage_trainable


def default_uncond_value(model: Any) -> Any:
    """The unconditional input v: ``ucg_training[cond_stage_key].val`` when set, else ``""`` for captions, else
    None (no unconditional embedding is stored)."""
    spec = model.ucg_training.get(model.cond_stage_key)
    if spec is not None:
        value = spec.get("val", "")
        return "" if value is None else value
    return "" if model.cond_stage_key in ("caption", "txt") else None


def _unconditional_input(model: Any, value: Any) -> Any:
    """v as a batch of one, in the form ``get_input`` hands the conditioner (a list of captions or a label batch)."""
    key = model.cond_stage_key
    if key in ("caption", "txt"):
        return [value]
    if key == "class_label":
        return {key: torch.tensor([value], device=model.device)}
    raise UnsupportedSettingError(
        f"--uncond_value: an unconditional embedding can be cached for captions and class labels, not for "
        f"cond_stage_key {key!r}; leave --uncond_value unset."
    )


def _plain_fields(batch: Mapping[str, Any], size: int, skip: set[str]) -> list[dict[str, Any]]:
    """Each sample's JSON-able fields (strings, numbers, their lists; ``(B,)`` tensors become numbers)."""
    columns = {}
    for name, value in batch.items():
        if name in skip:
            continue
        if isinstance(value, torch.Tensor) and value.ndim == 1:
            columns[name] = value.tolist()
        elif isinstance(value, (list, tuple)) and len(value) == size and all(
            isinstance(v, (str, int, float, bool)) for v in value
        ):
            columns[name] = list(value)
    return [{name: column[i] for name, column in columns.items()} for i in range(size)]


def _latent_tensor(encoded: Any, suffix: str = "") -> tuple[str, torch.Tensor]:
    """``("moments", [mean, logvar])`` of a Gaussian posterior, ``("z", tensor)`` otherwise."""
    if isinstance(encoded, DiagonalGaussianDistribution):
        return "moments" + suffix, encoded.parameters
    if isinstance(encoded, torch.Tensor):
        return "z" + suffix, encoded
    raise UnsupportedSettingError(
        f"the first stage's encode() gave a {type(encoded).__name__}; the latent cache stores a "
        "DiagonalGaussianDistribution's moments or a tensor."
    )


@torch.no_grad()
def encode_batch(model: Any, batch: Mapping[str, Any], index: CacheIndex) -> dict[str, torch.Tensor]:
    """The tensors of one batch: the first stage's output (and of the mirrored images), the conditioning."""
    x = images_channels_first(batch[index.first_stage_key]).to(model.device)
    tensors = dict([_latent_tensor(model.encode_first_stage(x))])
    if index.hflip:
        tensors.update([_latent_tensor(model.encode_first_stage(x.flip(-1)), "_flipped")])
    if index.cond:
        c = model.get_learned_conditioning(keys.conditioning_input(model, batch, index.cond_key, x))
        if not isinstance(c, torch.Tensor):
            raise UnsupportedSettingError(
                f"the conditioner gave a {type(c).__name__}; only tensor conditionings can be cached (use --no_cond)."
            )
        tensors["cond"] = c
    dtype = getattr(torch, index.dtype)
    return {name: value.detach().to("cpu", dtype) for name, value in tensors.items()}


def _check_flip(model: Any, index: CacheIndex) -> None:
    if index.hflip and index.cond and index.cond_key not in ("caption", "txt", "class_label"):
        raise UnsupportedSettingError(
            f"--hflip with cond_stage_key {index.cond_key!r}: an image conditioning would need mirroring too; "
            "cache without --hflip."
        )


def _write_uncond(model: Any, root: Path, value: Any, dtype: str) -> None:
    with torch.no_grad():
        uncond = model.get_learned_conditioning(_unconditional_input(model, value))
    save_safetensors(root / UNCOND_FILE, {"uncond": uncond.to("cpu", getattr(torch, dtype))},
                     metadata={"value": json.dumps(value)})


def _shard_batches(index: CacheIndex, shards: list[int], batch_size: int) -> Iterator[tuple[int, list[int]]]:
    """``(shard, dataset indices)`` of every batch, in order; no batch crosses a shard boundary."""
    for k in shards:
        rows = list(index.shard_rows(k))
        for start in range(0, len(rows), batch_size):
            yield k, rows[start : start + batch_size]


def write_latent_cache(
    model: Any,
    dataset: Dataset,
    out: str | Path,
    batch_size: int = 16,
    shard_size: int = 1024,
    limit: int | None = None,
    fp16: bool = False,
    hflip: bool = False,
    cache_cond: bool = True,
    uncond_value: Any = None,
    num_workers: int = 0,
    source: Mapping[str, Any] | None = None,
) -> CacheIndex:
    """Encode the first ``limit`` samples of ``dataset`` (all without ``limit``) into the cache folder ``out``.

    ``model`` is a LatentDiffusion (eval mode, on its device); conditionings are cached with ``cache_cond`` when its
    cond stage is frozen, with the embedding of ``uncond_value`` (default :func:`default_uncond_value`). Finished
    shards are skipped, so an interrupted run continues where it stopped.
    """
    root = Path(out)
    cond = cache_cond and caches_conditioning(model)
    uncond_value = default_uncond_value(model) if cond and uncond_value is None else uncond_value
    index = CacheIndex(
        num_samples=len(dataset) if limit is None else min(limit, len(dataset)),
        shard_size=shard_size,
        dtype="float16" if fp16 else "float32",
        hflip=hflip,
        first_stage_key=model.first_stage_key,
        cond_key=model.cond_stage_key if cond else None,
        cond=cond,
        uncond=cond and uncond_value is not None,
        source=dict(source or {}),
    )
    if index.num_samples == 0:
        raise ConfigError("the dataset is empty (or --limit is 0): nothing to cache")
    _check_flip(model, index)
    if (root / INDEX_FILE).is_file():
        conflict = _settings_conflict(CacheIndex.read(root), index)
        if conflict:
            raise SettingError(f"{root} holds a cache made with other settings ({'; '.join(conflict)}); "
                               "choose another --out or delete that folder.")
    else:
        index.write(root)
    if index.uncond and not (root / UNCOND_FILE).is_file():
        _write_uncond(model, root, uncond_value, index.dtype)

    shards = index.missing_shards(root)
    done = index.num_samples - sum(len(index.shard_rows(k)) for k in shards)
    plan = list(_shard_batches(index, shards, batch_size))
    loader = DataLoader(dataset, batch_sampler=[rows for _, rows in plan], num_workers=num_workers)
    skip = {index.first_stage_key}
    pending: dict[str, list[torch.Tensor]] = {}
    samples: list[dict[str, Any]] = []
    with tqdm(total=index.num_samples, initial=done, desc="caching latents", unit="img") as progress:
        for (k, rows), batch in zip(plan, loader):
            for name, value in encode_batch(model, batch, index).items():
                pending.setdefault(name, []).append(value)
            samples += _plain_fields(batch, len(rows), skip)
            progress.update(len(rows))
            if rows[-1] == index.shard_rows(k)[-1]:
                tensors = {name: torch.cat(parts) for name, parts in pending.items()}
                save_safetensors(root / shard_name(k), tensors, metadata={"samples": json.dumps(samples)})
                pending, samples = {}, []
    logger.info("latent cache %s: %d samples in %d shards", root, index.num_samples, index.num_shards)
    return index


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


class LatentCacheDataset(Dataset):
    """The samples of a latent cache as dicts: ``cached_moments`` (or ``cached_z``), ``cached_cond``,
    ``cached_uncond`` + ``cached_uncond_value`` when present, and each sample's plain fields (e.g. ``caption``).

    With ``random_flip`` (a cache written with ``hflip``) each access takes the mirrored image's latents with
    probability ½ (torch's RNG), as a random horizontal flip of the images would. Tensors keep the storage dtype;
    ``LatentDiffusion.get_input`` computes in float32. Use it as a ``data:`` split::

        train:
          target: ldm.data.latent_cache.LatentCacheDataset
          params: {root: cache/train, random_flip: true}
    """

    def __init__(self, root: str | Path, random_flip: bool = False) -> None:
        self.root = Path(root)
        self.index = CacheIndex.read(self.root)
        missing = self.index.missing_shards(self.root)
        if missing:
            raise ConfigError(
                f"latent cache {self.root} is incomplete ({len(missing)} of {self.index.num_shards} shards missing, "
                f"e.g. {shard_name(missing[0])}); run scripts/cache_latents.py again with the same arguments."
            )
        if random_flip and not self.index.hflip:
            raise SettingError(f"random_flip: true needs a cache written with --hflip; {self.root} has no mirrored "
                               "latents (set random_flip: false or re-create the cache).")
        self.random_flip = random_flip
        self.uncond: dict[str, Any] = {}
        if self.index.uncond:
            with safe_open(self.root / UNCOND_FILE, framework="pt") as handle:
                self.uncond = {keys.CACHED_UNCOND: handle.get_tensor("uncond")[0],
                               keys.CACHED_UNCOND_VALUE: json.loads(handle.metadata()["value"])}
        self._open: OrderedDict[int, tuple[Any, list[dict[str, Any]]]] = OrderedDict()

    def __len__(self) -> int:
        return self.index.num_samples

    def __getstate__(self) -> dict[str, Any]:
        """Open shards stay behind when the dataset is sent to DataLoader workers; each opens its own."""
        return {**self.__dict__, "_open": OrderedDict()}

    def _shard(self, k: int) -> tuple[Any, list[dict[str, Any]]]:
        """The open shard ``k`` and its samples' fields (the least recently used shard is closed beyond a few)."""
        if k not in self._open:
            handle = safe_open(self.root / shard_name(k), framework="pt")
            self._open[k] = (handle, json.loads(handle.metadata()["samples"]))
            if len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        self._open.move_to_end(k)
        return self._open[k]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is out of range for a latent cache of {len(self)} samples")
        handle, samples = self._shard(i // self.index.shard_size)
        row = i % self.index.shard_size
        names = set(handle.keys())
        flipped = self.random_flip and bool(torch.rand(()) < 0.5)
        item = dict(samples[row])
        for stored, key in (("moments", keys.CACHED_MOMENTS), ("z", keys.CACHED_Z)):
            name = f"{stored}_flipped" if flipped else stored
            if name in names:
                item[key] = handle.get_slice(name)[row : row + 1][0]
        if "cond" in names:
            item[keys.CACHED_COND] = handle.get_slice("cond")[row : row + 1][0]
        item.update(self.uncond)
        return item


def bytes_per_sample(index: CacheIndex, root: str | Path) -> float:
    """Disk bytes of the shards divided by the number of samples."""
    total = sum((Path(root) / shard_name(k)).stat().st_size for k in range(index.num_shards))
    return total / index.num_samples
