"""The generator metrics of one evaluation, from features: which ones, their settings, the results as a flat
dict (what ``scripts/evaluate.py`` writes as JSON) and the one-line table of them.

Generated features ``{"pool": (N, D), "logits": (N, K)}`` are compared with a :class:`ReferenceStats`: FID from
the moments (the reference's own, possibly precomputed by the ADM evaluator), KID and precision/recall from the
reference's pool features, the Inception Score from the generated logits alone, the CLIP score from per-image
scores computed while sampling.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ldm.evaluation.features import LOGITS, POOL
from ldm.evaluation.frechet import feature_statistics, frechet_distance
from ldm.evaluation.inception_score import IS_SPLITS, inception_score_from_logits
from ldm.evaluation.kid import KID_SUBSET_SIZE, KID_SUBSETS, kernel_inception_distance
from ldm.evaluation.precision_recall import PR_NEIGHBORHOOD, precision_recall
from ldm.evaluation.reference_stats import ReferenceStats

logger = logging.getLogger(__name__)

#: Metric names of ``--metrics``: which of them need the reference, and which its features (not only moments).
METRICS = ("fid", "kid", "is", "pr", "clip")
NEEDS_REFERENCE = ("fid", "kid", "pr")
NEEDS_REFERENCE_FEATURES = ("kid", "pr")


@dataclass
class MetricSettings:
    """KID subsets and subset size (clipped to the smaller set, with a warning), IS splits and shuffle seed (None:
    no shuffle, as ADM), precision/recall neighbourhood, and the device of the distance computations."""

    kid_subsets: int = KID_SUBSETS
    kid_subset_size: int = KID_SUBSET_SIZE
    is_splits: int = IS_SPLITS
    is_shuffle_seed: int | None = None
    pr_neighborhood: int = PR_NEIGHBORHOOD
    device: str = "cpu"
    seed: int = 0


def parse_metrics(text: str) -> list[str]:
    """``"fid,kid,is"`` → the names, each one of :data:`METRICS`; ``ValueError`` naming the unknown ones."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics {text!r}: unknown {unknown}; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def generator_metrics(
    generated: dict[str, np.ndarray], reference: ReferenceStats | None, metrics: Iterable[str],
    settings: MetricSettings | None = None, clip_scores: np.ndarray | None = None,
) -> dict[str, float]:
    """The requested metrics of generated features against ``reference`` (flat dict: ``fid``, ``kid_mean``,
    ``kid_std``, ``is_mean``, ``is_std``, ``precision``, ``recall``, ``clip_score``, and ``num_generated``)."""
    settings = settings or MetricSettings()
    metrics = list(metrics)
    pool = generated[POOL]
    results: dict[str, float] = {"num_generated": float(len(pool))}
    if reference is None and any(name in NEEDS_REFERENCE for name in metrics):
        raise ValueError(f"{', '.join(n for n in metrics if n in NEEDS_REFERENCE)} need a reference (--reference)")
    if reference is not None and any(name in NEEDS_REFERENCE_FEATURES for name in metrics) and \
            reference.pool_features is None:
        raise ValueError("KID and precision/recall need the reference's features, but the reference holds only "
                         "moments; give a reference with images (a folder, or an .npz with arr_0) or with "
                         "pool_features")
    if "fid" in metrics:
        results["fid"] = frechet_distance(*feature_statistics(pool), reference.mu, reference.sigma)
    if "kid" in metrics:
        size = min(settings.kid_subset_size, len(pool), len(reference.pool_features))
        if size < settings.kid_subset_size:
            logger.warning("KID subset size %d is above the number of samples; using %d", settings.kid_subset_size,
                           size)
        mean, std = kernel_inception_distance(pool, reference.pool_features, settings.kid_subsets, size, settings.seed)
        results.update(kid_mean=mean, kid_std=std, kid_subset_size=float(size))
    if "is" in metrics:
        if LOGITS not in generated:
            raise ValueError("the Inception Score needs class logits, which this feature extractor does not give")
        mean, std = inception_score_from_logits(generated[LOGITS], settings.is_splits, settings.is_shuffle_seed)
        results.update(is_mean=mean, is_std=std)
    if "pr" in metrics:
        precision, recall = precision_recall(pool, reference.pool_features, settings.pr_neighborhood,
                                             device=settings.device)
        results.update(precision=precision, recall=recall)
    if "clip" in metrics:
        if clip_scores is None:
            raise ValueError("the CLIP score needs prompts: sample with --prompts (or give --sample-prompts for a "
                             "folder of images in prompt order)")
        results["clip_score"] = float(np.mean(clip_scores))
    return results


def summary_line(results: dict[str, float]) -> str:
    """One line of the results, e.g. ``FID 12.345 | KID 0.01230 ± 0.00040 | IS 45.67 ± 1.23 | N 50000``."""
    parts = []
    if "fid" in results:
        parts.append(f"FID {results['fid']:.3f}")
    if "kid_mean" in results:
        parts.append(f"KID {results['kid_mean']:.5f} ± {results['kid_std']:.5f}")
    if "is_mean" in results:
        parts.append(f"IS {results['is_mean']:.2f} ± {results['is_std']:.2f}")
    if "precision" in results:
        parts.append(f"precision {results['precision']:.3f} recall {results['recall']:.3f}")
    if "clip_score" in results:
        parts.append(f"CLIP {results['clip_score']:.2f}")
    parts.append(f"N {int(results['num_generated'])}")
    return " | ".join(parts)
