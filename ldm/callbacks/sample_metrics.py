"""Sample quality during training: every N steps, sample a fixed set and log FID (and KID, shapes adherence).

The set is fixed for the whole run: sample ``i`` starts from ``x_T`` drawn with seed ``seed + i`` and is conditioned
on item ``i`` of the validation data (its caption / class label / image conditioning, as ``get_input`` reads it), so
the logged figures move only because the model does. The samples' features are compared with a reference:

    FID = ‖μ_s − μ_r‖² + tr(Σ_s + Σ_r − 2 (Σ_s Σ_r)^½)         (:mod:`ldm.evaluation.frechet`)

With several processes (DDP) each rank samples its contiguous share of the set, the features are gathered, and rank
0 computes and logs the figures to every logger of the trainer (``logger.log_metrics(..., step=global_step)``: a
TensorBoard scalar, a CSV column) and to ``trainer.callback_metrics`` (so ``ModelCheckpoint`` can monitor them).

Config example (``lightning.callbacks``), for the demo's shapes model::

    sample_metrics:
      target: ldm.callbacks.sample_metrics.SampleMetrics
      params:
        every_n_steps: 400
        num_samples: 256
        feature_extractor: shapes      # or inception, or {target: ..., params: ...}
        scale: 3.0
        steps: 25
        eta: 1.0
        shapes_adherence: true
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, default_collate

from ldm.data.shapes import ShapeSpec
from ldm.data.shapes_checker import read_shape
from ldm.evaluation.features import INCEPTION, POOL
from ldm.evaluation.frechet import feature_statistics, frechet_distance
from ldm.evaluation.reconstruction import to_8bit
from ldm.util import ConfigError, instantiate_from_config

logger = logging.getLogger(__name__)

#: Attributes the shapes checker reads; ``all`` is every one at once.
SHAPE_ATTRIBUTES = ("kind", "color", "size", "position")


def build_feature_extractor(spec: str | Mapping[str, Any] | nn.Module) -> nn.Module:
    """``"inception"`` (torch-fidelity's Inception-v3), ``"shapes"`` (:mod:`ldm.evaluation.shapes_features`), a
    ``{target, params}`` config of a :class:`ldm.evaluation.features.FeatureExtractor`, or the module itself."""
    if isinstance(spec, nn.Module):
        return spec
    if spec in ("inception", INCEPTION):
        from ldm.evaluation.features import load_feature_extractor

        return load_feature_extractor(INCEPTION)
    if spec == "shapes":
        from ldm.evaluation.shapes_features import ShapesFeatureExtractor

        return ShapesFeatureExtractor()
    if isinstance(spec, Mapping) and "target" in spec:
        return instantiate_from_config(spec)
    raise ConfigError(f"SampleMetrics feature_extractor={spec!r}: use inception, shapes or a {{target, params}} "
                      "config of a FeatureExtractor")


def concat_batches(batches: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One batch from several: tensors and arrays concatenated along dim 0, lists joined."""
    joined: dict[str, Any] = {}
    for key in batches[0]:
        values = [batch[key] for batch in batches]
        if isinstance(values[0], torch.Tensor):
            joined[key] = torch.cat(values)
        elif isinstance(values[0], np.ndarray):
            joined[key] = np.concatenate(values)
        else:
            joined[key] = [item for value in values for item in value]
    return joined


def slice_batch(batch: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Items ``start:stop`` of every entry of ``batch``."""
    return {key: value[start:stop] for key, value in batch.items()}


def shape_matches(images: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
    """``(B, 5)`` 0/1: whether the shapes checker reads each attribute (then all four) of ``images`` ``(B, 3, H, W)``
    in [-1, 1] as ``batch`` (a :class:`ldm.data.shapes.ShapesDataset` batch) says."""
    pictures = to_8bit(images).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    rows = []
    for i, picture in enumerate(pictures):
        wanted = ShapeSpec(*(batch[name][i] for name in SHAPE_ATTRIBUTES))
        seen = read_shape(picture)
        hits = [seen is not None and getattr(seen, name) == getattr(wanted, name) for name in SHAPE_ATTRIBUTES]
        rows.append([*hits, all(hits)])
    return torch.tensor(rows, dtype=torch.float64)


class SampleMetrics(pl.Callback):
    """Every ``every_n_steps`` optimizer steps: sample ``num_samples`` images and log FID against ``reference``.

    :param every_n_steps: measure when ``global_step`` is a multiple of it (after that step's update).
    :param num_samples: size of the fixed sample set (FID needs hundreds to be stable; its bias shrinks as 1/N).
    :param reference: where the reference features come from: None (the first ``num_reference`` images of the
        validation data), a ``.npz`` file with ``mu`` / ``sigma`` (the ADM layout, as ``scripts/evaluate.py
        --save-stats`` writes them; its ``arr_0`` images are used when it has no statistics), or a dataset config
        ``{target, params}`` whose items have ``image`` ``(H, W, 3)`` in [-1, 1].
    :param num_reference: how many reference images to use (dataset or validation data).
    :param feature_extractor: see :func:`build_feature_extractor`.
    :param sampler: a sampler name of :func:`ldm.inference.make_sampler` (``ddim``, ``plms``, ``dpmpp_2m``, ...).
    :param steps: sampler steps; ``eta``: DDIM noise; ``scale``: classifier-free guidance scale (1 = none).
    :param null_label: the unconditional input for guidance (default ``[""]`` for caption/txt models, the
        conditioner's own for class-conditional ones).
    :param seed: sample ``i`` starts from noise drawn with seed ``seed + i``.
    :param batch_size: samples per sampler call.
    :param kid_subset_size: also log KID (unbiased MMD², cubic kernel) with subsets of this size (None: no KID;
        needs reference features, not just ``mu`` / ``sigma``).
    :param shapes_adherence: also log the fraction of samples whose attributes the shapes checker reads as their
        caption says (the validation data must be a :class:`ldm.data.shapes.ShapesDataset`).
    :param use_ema: sample with the EMA weights when the model keeps them.
    :param prefix: metric names are ``<prefix>fid``, ``<prefix>kid``, ``<prefix>shapes_<attribute>``.
    """

    def __init__(
        self,
        every_n_steps: int,
        num_samples: int = 64,
        reference: str | Mapping[str, Any] | None = None,
        num_reference: int = 1000,
        feature_extractor: str | Mapping[str, Any] | nn.Module = "inception",
        sampler: str = "ddim",
        steps: int = 25,
        eta: float = 0.0,
        scale: float = 1.0,
        null_label: Any = None,
        seed: int = 0,
        batch_size: int = 16,
        kid_subset_size: int | None = None,
        shapes_adherence: bool = False,
        use_ema: bool = True,
        prefix: str = "sample_metrics/",
    ) -> None:
        super().__init__()
        if every_n_steps < 1 or num_samples < 2 or batch_size < 1:
            raise ConfigError(f"SampleMetrics: every_n_steps ({every_n_steps}) and batch_size ({batch_size}) must be "
                              f">= 1 and num_samples ({num_samples}) >= 2 (FID needs a covariance)")
        reference, feature_extractor, null_label = (
            OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            for value in (reference, feature_extractor, null_label))
        self.every_n_steps, self.num_samples, self.num_reference = every_n_steps, num_samples, num_reference
        self.reference, self.feature_spec = reference, feature_extractor
        self.sampler_name, self.steps, self.eta, self.scale = sampler, steps, eta, scale
        self.null_label, self.seed, self.batch_size = null_label, seed, batch_size
        self.kid_subset_size, self.shapes_adherence, self.use_ema = kid_subset_size, shapes_adherence, use_ema
        self.prefix = prefix
        self.extractor: nn.Module | None = None
        self.conditioning_batch: dict[str, Any] | None = None
        self.reference_stats: tuple[np.ndarray, np.ndarray] | None = None
        self.reference_features: torch.Tensor | None = None
        self.history: list[tuple[int, dict[str, float]]] = []
        self._last_step = -1

    # ---- fixed inputs, prepared once ------------------------------------------------------------------------

    def _validation_items(self, trainer: pl.Trainer, count: int) -> dict[str, Any] | None:
        """Items ``0 .. count − 1`` of the validation dataset as one batch (None when there is no validation data).

        The items are read from the dataset itself, not from the (under DDP, rank-sharded) loader, so every rank
        sees the same set."""
        loader = None
        datamodule = trainer.datamodule
        datasets = getattr(datamodule, "datasets", None)
        if isinstance(datasets, Mapping) and "validation" in datasets:
            dataset, collate = datasets["validation"], default_collate
        else:
            if datamodule is not None and callable(getattr(datamodule, "val_dataloader", None)):
                loader = datamodule.val_dataloader()
            else:
                trainer.fit_loop.epoch_loop.val_loop.setup_data()
                loader = trainer.val_dataloaders
            if isinstance(loader, (list, tuple)):
                loader = loader[0] if loader else None
            if not isinstance(loader, DataLoader):
                return None
            dataset, collate = loader.dataset, loader.collate_fn or default_collate
        if isinstance(dataset, IterableDataset):
            items = list(itertools.islice(iter(dataset), count))
        else:
            items = [dataset[i] for i in range(min(count, len(dataset)))]
        return collate(items) if items else None

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.extractor is None:
            self.extractor = build_feature_extractor(self.feature_spec).eval().requires_grad_(False)
        self.extractor.to(pl_module.device)
        if self.conditioning_batch is None:
            self.conditioning_batch = self._validation_items(trainer, self.num_samples)
            conditional = getattr(pl_module.model, "conditioning_key", None) is not None
            if conditional and (self.conditioning_batch is None
                                or len(next(iter(self.conditioning_batch.values()))) < self.num_samples):
                raise ConfigError(f"SampleMetrics: the model is conditional and takes its conditioning from the "
                                  f"validation data, which must hold at least num_samples={self.num_samples} items; "
                                  "add data.params.validation or lower num_samples")
            if self.shapes_adherence and (self.conditioning_batch is None
                                          or not set(SHAPE_ATTRIBUTES) <= set(self.conditioning_batch)):
                raise ConfigError("SampleMetrics shapes_adherence: true needs ShapesDataset validation data "
                                  "(items with kind, color, size and position)")
        if trainer.is_global_zero and self.reference_stats is None:
            self._load_reference(trainer, pl_module)

    def _load_reference(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``reference_stats`` (μ, Σ) and, where images are at hand, ``reference_features``."""
        images = None
        if isinstance(self.reference, str):
            from ldm.evaluation.features import extractor_name
            from ldm.evaluation.reference_stats import load_reference_stats, npz_images, npz_keys

            if {"mu", "sigma"} <= set(npz_keys(self.reference)):
                stats = load_reference_stats(self.reference)
                if stats.feature_extractor != extractor_name(self.extractor):
                    raise ConfigError(f"SampleMetrics reference {self.reference} holds {stats.feature_extractor} "
                                      f"statistics but feature_extractor is {extractor_name(self.extractor)}; make "
                                      "the reference with the same extractor")
                self.reference_stats = (stats.mu, stats.sigma)
                if stats.pool_features is not None:
                    self.reference_features = torch.from_numpy(stats.pool_features).double()
                return
            images = torch.from_numpy(np.array(npz_images(self.reference)[: self.num_reference])).permute(0, 3, 1, 2)
        elif isinstance(self.reference, Mapping):
            dataset = instantiate_from_config(self.reference)
            count = min(self.num_reference, len(dataset))
            images = torch.stack([torch.as_tensor(np.asarray(dataset[i]["image"])) for i in range(count)])
            images = to_8bit(images.permute(0, 3, 1, 2)).to(torch.uint8)
        else:
            batch = self._validation_items(trainer, self.num_reference)
            if batch is None:
                raise ConfigError("SampleMetrics: no reference given and no validation data to take it from; set "
                                  "reference to a .npz of statistics or a dataset config")
            key = getattr(pl_module, "first_stage_key", "image")
            images = to_8bit(torch.as_tensor(batch[key]).permute(0, 3, 1, 2)).to(torch.uint8)
        self.reference_features = self._features(images, pl_module.device)
        self.reference_stats = feature_statistics(self.reference_features)

    @torch.no_grad()
    def _features(self, images_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
        parts = [self.extractor(part.to(device))[POOL].double().cpu() for part in images_uint8.split(self.batch_size)]
        return torch.cat(parts)

    # ---- sampling -------------------------------------------------------------------------------------------

    def initial_noise(self, indices: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
        """``x_T`` ``(len(indices), *shape)``: sample ``i`` from a generator seeded with ``seed + i``."""
        return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(self.seed + i))
                            for i in indices])

    @torch.no_grad()
    def sample_images(self, pl_module: pl.LightningModule, indices: Sequence[int]) -> torch.Tensor:
        """Samples ``indices`` of the fixed set, decoded: ``(len(indices), 3, H, W)`` in [-1, 1]."""
        from ldm.inference import make_sampler

        sampler = make_sampler(self.sampler_name, pl_module)
        shape = (pl_module.channels, pl_module.image_size, pl_module.image_size)
        images = []
        for start in range(0, len(indices), self.batch_size):
            chunk = list(indices[start : start + self.batch_size])
            cond, uc = self._conditioning(pl_module, chunk)
            x_T = self.initial_noise(chunk, shape).to(pl_module.device)
            generator = torch.Generator(pl_module.device).manual_seed(self.seed + 1_000_003 + chunk[0])
            samples, _ = sampler.sample(
                S=self.steps, batch_size=len(chunk), shape=shape, conditioning=cond, eta=self.eta, x_T=x_T,
                unconditional_guidance_scale=self.scale, unconditional_conditioning=uc, verbose=False,
                generator=generator, disable_progress=True,
            )
            images.append(pl_module.decode_first_stage(samples).float().clamp(-1.0, 1.0))
        return torch.cat(images)

    def _conditioning(self, pl_module: pl.LightningModule, chunk: list[int]) -> tuple[Any, Any]:
        if getattr(pl_module.model, "conditioning_key", None) is None or self.conditioning_batch is None:
            return None, None
        rows = {key: _take(value, chunk) for key, value in self.conditioning_batch.items()}
        _, cond = pl_module.get_input(rows, pl_module.first_stage_key, force_c_encode=True)[:2]
        if self.scale == 1.0:
            return cond, None
        null_label = self.null_label
        if null_label is None and pl_module.cond_stage_key in ("caption", "txt"):
            null_label = [""]
        return cond, pl_module.get_unconditional_conditioning(len(chunk), null_label)

    # ---- measuring ------------------------------------------------------------------------------------------

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        self.measure(trainer, pl_module)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        """Sample this rank's share, gather, and on rank 0 compute and log the figures (returned there)."""
        self._prepare(trainer, pl_module)
        world = trainer.world_size
        indices = rank_indices(self.num_samples, world, trainer.global_rank)
        was_training = pl_module.training
        pl_module.eval()
        try:
            use_ema = self.use_ema and hasattr(pl_module, "ema_scope")
            with pl_module.ema_scope("SampleMetrics") if use_ema else contextlib.nullcontext():
                images = self.sample_images(pl_module, indices)
        finally:
            pl_module.train(was_training)
        local = self._features(to_8bit(images).to(torch.uint8), pl_module.device)
        gathered = {"features": local}
        if self.shapes_adherence:
            wanted = {key: _take(value, indices) for key, value in self.conditioning_batch.items()}
            gathered["shapes"] = shape_matches(images, wanted)
        if world > 1:
            gathered = {k: trainer.strategy.all_gather(v.to(pl_module.device)).reshape(-1, v.shape[1]).cpu()
                        for k, v in gathered.items()}
        if not trainer.is_global_zero:
            return None
        features = gathered["features"][: self.num_samples]
        metrics = {f"{self.prefix}fid": frechet_distance(*feature_statistics(features), *self.reference_stats)}
        if self.kid_subset_size is not None:
            metrics[f"{self.prefix}kid"] = self._kid(features)
        if self.shapes_adherence:
            rates = gathered["shapes"][: self.num_samples].mean(dim=0)
            for name, rate in zip((*SHAPE_ATTRIBUTES, "all"), rates.tolist()):
                metrics[f"{self.prefix}shapes_{name}"] = rate
        self._log(trainer, metrics)
        return metrics

    def _kid(self, features: torch.Tensor) -> float:
        if self.reference_features is None:
            raise ConfigError("SampleMetrics kid_subset_size needs reference images or a dataset, not only mu/sigma")
        from ldm.evaluation.kid import kernel_inception_distance

        size = min(self.kid_subset_size, len(features), len(self.reference_features))
        return kernel_inception_distance(features, self.reference_features, subset_size=size, seed=self.seed)[0]

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        step = trainer.global_step
        self.history.append((step, metrics))
        for run_logger in trainer.loggers:
            run_logger.log_metrics(metrics, step=step)
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})
        logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


def rank_indices(count: int, world: int, rank: int) -> list[int]:
    """The samples rank ``rank`` of ``world`` draws: a contiguous share of ``ceil(count / world)`` indices, the
    last rank's padded by repeating ``count − 1`` so every rank gathers as many. The gathered rows, rank after rank,
    are then samples ``0, 1, …``; the first ``count`` of them are the set."""
    share = math.ceil(count / world)
    return [min(i, count - 1) for i in range(rank * share, (rank + 1) * share)]


def _take(value: Any, indices: Sequence[int]) -> Any:
    """Items ``indices`` of a tensor, array or list."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value[list(indices)]
    return [value[i] for i in indices]
