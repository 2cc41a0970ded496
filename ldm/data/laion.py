"""``WebDataModuleFromConfig``: training data streamed from webdataset tar shards (LAION, img2dataset output), with
the names Stability-AI's SD 2.x training configs use (``ldm.data.laion.WebDataModuleFromConfig``, ``AddMask``,
``AddLR``, ``AddBW``, ``dict_collation_fn``, ``identity``).

A split config (``train`` / ``validation`` / ``test``)::

    shards: "laion/{000000..000099}.tar"   # brace pattern, list of them, or a shard-list file; under tar_base
    shuffle: 10000                         # shuffle buffer in samples (0: none); shards are shuffled when > 0
    image_key: jpg                         # the image member (default: the first of jpg/jpeg/png/webp)
    image_transforms: [{target: torchvision.transforms.Resize, params: {size: 512, interpolation: 3}}, ...]
    transforms: {txt: identity}            # per-key callables ({target, params} partials or "identity")
    postprocess: {target: ldm.data.laion.AddMask, params: {mode: 512train-large, p_drop: 0.25}}
    repeat: true                           # endless stream (default: true for train, false otherwise)

Every batch is ``{image_key and "image": (B, H, W, 3) float in [-1, 1], "txt" and "caption": [B str],
"__key__", "__url__", "json", ...}``. The data streaming itself is :mod:`ldm.data.webdataset_stream` (resumable
positions, skipped-sample counts) and :mod:`ldm.data.stream_loader`; the filters are
:class:`ldm.data.stream_samples.SampleFilters`; bucketing is :mod:`ldm.data.aspect_buckets`. See
``docs/training_data.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
import yaml
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.trainer.states import TrainerFn

from ldm.cli.resumable_data import EpochPosition
from ldm.data.aspect_buckets import AspectBuckets
from ldm.data.inpainting.synthetic_mask import MASK_MODES
from ldm.data.shard_lists import expand_shards
from ldm.data.stream_loader import StreamLoader
from ldm.data.stream_samples import ParsedSample, SampleFilters
from ldm.data.webdataset_stream import ShardStream, StreamOptions, default_example, dict_collation_fn
from ldm.modules.image_degradation import degradation_fn_bsr_light
from ldm.util import ConfigError, get_obj_from_str, instantiate_from_config

logger = logging.getLogger(__name__)

__all__ = ["AddBW", "AddLR", "AddMask", "WebDataModuleFromConfig", "dict_collation_fn", "identity",
           "load_partial_from_config"]

_SPLIT_KEYS = {"shards", "shuffle", "image_key", "image_transforms", "transforms", "postprocess", "repeat",
               "shard_shuffle"}


def identity(x: Any) -> Any:
    """The value unchanged (the ``"identity"`` entry of a split's ``transforms``)."""
    return x


def load_partial_from_config(config: Mapping[str, Any]) -> Callable[..., Any]:
    """``functools.partial(target, **params)`` of a ``{target, params}`` node (a callable, not yet called)."""
    if "target" not in config:
        raise ConfigError(f"transform {dict(config)!r} has no 'target'; write "
                          "{target: module.function, params: ...}.")
    return partial(get_obj_from_str(config["target"]), **dict(config.get("params") or {}))


def _read_filter_words(spec: str | list[str] | None) -> tuple[str, ...]:
    """Lower-cased words from a list, or from a YAML file (a list, or a mapping of lists) / a text file (one word
    a line)."""
    if spec is None:
        return ()
    if isinstance(spec, str):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"filter_word_list file {spec!r} does not exist; fix 'data.params.filter_word_list' or "
                              "remove it.")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(loaded, Mapping):
            spec = [word for words in loaded.values() for word in (words or [])]
        elif isinstance(loaded, list):
            spec = loaded
        else:
            spec = path.read_text(encoding="utf-8").splitlines()
    return tuple(str(word).strip().lower() for word in spec if str(word).strip())


class LaionExample:
    """``(image, parsed sample) → example``: ``image_transforms`` on the PIL image, the LDM entry
    (:func:`~ldm.data.webdataset_stream.default_example`), the per-key ``transforms``, then ``postprocess``."""

    def __init__(self, image_key: str, image_transforms: Callable[[Image.Image], Image.Image] | None,
                 key_transforms: dict[str, Callable[[Any], Any]], postprocess: Callable[[dict], dict] | None):
        self.image_key, self.image_transforms = image_key, image_transforms
        self.key_transforms, self.postprocess = key_transforms, postprocess

    def __call__(self, image: Image.Image, sample: ParsedSample) -> dict[str, Any]:
        if self.image_transforms is not None:
            image = self.image_transforms(image)
        example = default_example(image, sample, self.image_key)
        for key, transform in self.key_transforms.items():
            if key in example:
                example[key] = transform(example[key])
        example["caption"] = example["txt"]
        example["image"] = example[self.image_key]
        return self.postprocess(example) if self.postprocess is not None else example


class WebDataModuleFromConfig(pl.LightningDataModule):
    """A LightningDataModule streaming the configured splits from tar shards (see the module docstring).

    :param tar_base: folder or URL prefix joined in front of relative shard paths (None: none).
    :param multinode: split shards by rank (True) or refuse to run on several ranks.
    :param min_size: drop images whose shorter side is below it (json ``original_width/height`` when present).
    :param max_pwatermark: drop samples whose json ``pwatermark`` exceeds it (1.0: no filter).
    :param p_unsafe_threshold: drop samples whose json ``punsafe`` is at least it (None: no filter).
    :param filter_word_list: drop samples whose caption contains one of these words (a list, or a YAML / text
        file of them).
    :param max_aspect_ratio: drop images with ``long side / short side`` above it (None: no filter).
    :param aspect_buckets: aspect-ratio bucketing settings (:mod:`ldm.data.aspect_buckets`; None: off).
    :param seed: root of the stream's random choices (default: the run's seed, ``PL_GLOBAL_SEED``, else 0).
    """

    def __init__(self, tar_base: str | None, batch_size: int, train: Mapping | None = None,
                 validation: Mapping | None = None, test: Mapping | None = None, num_workers: int = 4,
                 multinode: bool = True, min_size: int | None = None, max_pwatermark: float = 1.0,
                 p_unsafe_threshold: float | None = None, filter_word_list: str | list[str] | None = None,
                 max_aspect_ratio: float | None = None, aspect_buckets: Mapping | None = None,
                 seed: int | None = None, **kwargs: Any):
        super().__init__()
        if kwargs:
            logger.warning("WebDataModuleFromConfig ignores data.params key(s) %s", sorted(kwargs))
        self.tar_base, self.batch_size, self.num_workers, self.multinode = tar_base, batch_size, num_workers, multinode
        self.train, self.validation, self.test = train, validation, test
        self.min_size, self.max_pwatermark = min_size, max_pwatermark
        self.filters = SampleFilters(
            min_size=min_size if min_size is not None and min_size > 1 else None,
            max_aspect_ratio=max_aspect_ratio,
            max_pwatermark=max_pwatermark if max_pwatermark is not None and max_pwatermark < 1.0 else None,
            p_unsafe_threshold=p_unsafe_threshold,
            filter_words=_read_filter_words(OmegaConf.to_container(filter_word_list)
                                            if OmegaConf.is_config(filter_word_list) else filter_word_list),
        )
        self.buckets = AspectBuckets.from_config(aspect_buckets) if aspect_buckets is not None else None
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else int(seed)
        self.train_position = EpochPosition(root=self.seed, batches_done=self._processed_batches)
        self._train_loader: StreamLoader | None = None
        self._loaded_state: dict[str, Any] | None = None
        for split, hook in (("train", "train_dataloader"), ("validation", "val_dataloader"),
                            ("test", "test_dataloader")):
            if getattr(self, split) is not None:
                setattr(self, hook, partial(self._split_loader, split))

    @property
    def dataset_configs(self) -> dict[str, Mapping]:
        """The configured splits (``main.py`` tests only when there is a ``test`` one)."""
        splits = {"train": self.train, "validation": self.validation, "test": self.test}
        return {name: config for name, config in splits.items() if config is not None}

    # loaders -----------------------------------------------------------------------------------------------------

    def _split_loader(self, split: str) -> StreamLoader:
        loader = self.make_loader(getattr(self, split), train=split == "train", split=split)
        if split == "train":
            self._train_loader = loader
            if self._loaded_state is not None:
                self._resume(loader, self._loaded_state)
        return loader

    def make_loader(self, dataset_config: Mapping, train: bool = True, split: str = "train") -> StreamLoader:
        """The :class:`StreamLoader` of one split config."""
        config = OmegaConf.to_container(dataset_config, resolve=True) if OmegaConf.is_config(dataset_config) \
            else dict(dataset_config)
        unknown = sorted(set(config) - _SPLIT_KEYS)
        if unknown:
            raise ConfigError(f"data.params.{split}: unknown key(s) {unknown}; allowed: {sorted(_SPLIT_KEYS)}.")
        if "shards" not in config:
            raise ConfigError(f"data.params.{split}: 'shards' is missing; give e.g. 'data/{{000000..000009}}.tar'.")
        urls = expand_shards(config["shards"], self.tar_base, key=f"data.params.{split}.shards")
        image_key = config.get("image_key")
        options = StreamOptions(batch_size=self.batch_size, shuffle=int(config.get("shuffle", 0) or 0),
                                shard_shuffle=config.get("shard_shuffle"), repeat=bool(config.get("repeat", train)),
                                multinode=self.multinode, image_key=image_key, seed=self.seed)
        stream = ShardStream(urls, options, self._example_maker(config, image_key or "jpg"), self.filters,
                             self.buckets, dict_collation_fn)
        logger.info("data split %s: %d shard(s)", split, len(urls))
        position = self.train_position if train else None
        return StreamLoader(stream, num_workers=self.num_workers, position=position,
                            on_skipped=self._log_skipped if train else None)

    @staticmethod
    def _example_maker(config: dict[str, Any], image_key: str) -> LaionExample:
        transforms = [instantiate_from_config(t, name="image_transforms") for t in config.get("image_transforms") or []]
        key_transforms = {key: identity if spec == "identity" else load_partial_from_config(spec)
                          for key, spec in (config.get("transforms") or {}).items()}
        postprocess = instantiate_from_config(config["postprocess"], name="postprocess") \
            if config.get("postprocess") else None
        image_transforms = torchvision.transforms.Compose(transforms) if transforms else None
        return LaionExample(image_key, image_transforms, key_transforms, postprocess)

    # progress: skipped samples and the resumable position ---------------------------------------------------------

    def _processed_batches(self) -> int | None:
        """The training loop's processed batches of this epoch while fitting, else None (count served batches)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return None
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed

    @property
    def skipped(self) -> dict[str, int]:
        """Training samples skipped so far, by reason (corrupt: ``bad_image``, ``no_caption``, ...; filtered:
        ``min_size``, ``pwatermark``, ...)."""
        return self._train_loader.skipped if self._train_loader is not None else {}

    def _log_skipped(self, skipped: dict[str, int]) -> None:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.logger is not None:
            trainer.logger.log_metrics({f"data/skipped_{reason}": float(n) for reason, n in skipped.items()},
                                       step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        """``{"train": {"ranks": [position of each rank]}}`` (gathered from every rank under DDP)."""
        if self._train_loader is None:
            return self._loaded_state or {}
        state = self._train_loader.position_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
            return {"train": {"ranks": states}}
        return {"train": {"ranks": [state]}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the train stream at the saved position (applied when the train loader is built)."""
        if not state_dict:
            return
        self._loaded_state = state_dict
        if self._train_loader is not None:
            self._resume(self._train_loader, state_dict)

    @staticmethod
    def _resume(loader: StreamLoader, state_dict: dict[str, Any]) -> None:
        ranks = state_dict["train"]["ranks"]
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
        if len(ranks) != world:
            logger.warning("the data stream was saved by %d rank(s) and now runs on %d; each rank restarts epoch %d",
                           len(ranks), world, ranks[0]["epoch"])
            loader.resume_from({**ranks[0], "batches": 0, "complete": False, "workers": [], "next_slot": 0,
                                "slots": loader.slots})
            return
        loader.resume_from(ranks[rank])


# postprocess steps (sample dict → sample dict; sample["jpg"] is an (H, W, 3) tensor in [-1, 1]) -----------------

def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()


def _from_uint8(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(x, dtype=np.uint8)).float() / 127.5 - 1.0


def _resize_uint8(x: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(x).resize((size, size), resample=Image.Resampling.BICUBIC))


class AddLR:
    """Adds ``sample["lr"]``: the image degraded by the light BSRGAN model at scale ``factor`` (optionally resized
    to ``initial_size`` first) and resized to ``output_size`` (bicubic), as an ``(s, s, 3)`` tensor in [-1, 1]."""

    def __init__(self, factor: int, output_size: int, initial_size: int | None = None, image_key: str = "jpg"):
        self.factor, self.output_size, self.initial_size, self.image_key = factor, output_size, initial_size, image_key

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        x = _to_uint8(sample[self.image_key])
        if self.initial_size is not None:
            x = _resize_uint8(x, self.initial_size)
        x = degradation_fn_bsr_light(x, sf=self.factor)["image"]
        sample["lr"] = _from_uint8(_resize_uint8(x, self.output_size))
        return sample


class AddBW:
    """Adds ``sample["lr"]``: a grey version of the image, ``Σ_c w_c x_c`` with random weights ``w`` (uniform, then
    normalised to sum 1), repeated on 3 channels."""

    def __init__(self, image_key: str = "jpg"):
        self.image_key = image_key

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        x = sample[self.image_key]
        weights = torch.rand(3, device=x.device)
        grey = torch.einsum("hwc,c->hw", x, weights / weights.sum())
        sample["lr"] = grey.unsqueeze(-1).repeat(1, 1, 3)
        return sample


class AddMask:
    """Adds the inpainting inputs ``sample["mask"]`` ((H, W, 1) in {0, 1}, 1 = to paint) and
    ``sample["masked_image"]`` (the image where the mask is 0, else 0): a synthetic mask of ``mode``
    (:data:`ldm.data.inpainting.synthetic_mask.MASK_MODES`), replaced by an all-ones mask with probability
    ``p_drop``. Random numbers come from numpy's global generator (seeded per sample by the stream).
    ``image_key`` names the image entry (``jpg`` in the original)."""

    def __init__(self, mode: str = "512train", p_drop: float = 0.0, image_key: str = "jpg"):
        if mode not in MASK_MODES:
            raise ConfigError(f"AddMask: unknown mask mode {mode!r}; choose one of {sorted(MASK_MODES)}.")
        self.make_mask, self.p_drop, self.image_key = MASK_MODES[mode], p_drop, image_key

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        x = sample[self.image_key]
        prng = np.random.RandomState(np.random.randint(2**31))
        mask = self.make_mask(prng, x.shape[0], x.shape[1])
        if prng.uniform() < self.p_drop:
            mask = np.ones_like(mask)
        mask = torch.from_numpy((mask > 0.5).astype(np.float32)[..., None])
        sample["mask"] = mask
        sample["masked_image"] = x * (mask < 0.5)
        return sample
