"""ScaNN, optional: a searcher it serialized is used when the ``scann`` package is installed, and
``scripts/train_searcher.py`` builds one with it. Without ScaNN the exact search of :mod:`ldm.retrieval.exact`
takes its place.

The size plan follows ScaNN's recommendations as the original training script applied them: brute force below
2·10⁴ database rows; asymmetric hashing (AH) with reordering below 10⁵; beyond that a partitioning tree of ``√N``
leaves (``max(leaves / 20, 1)`` searched per query, trained on ``N / 10`` rows) in front of AH and reordering.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

#: The file every serialized ScaNN searcher folder holds.
SCANN_CONFIG_FILE = "scann_config.pb"
BRUTE_FORCE_BELOW = 20_000
HASHING_BELOW = 100_000


def scann_module() -> ModuleType | None:
    """The installed ``scann`` package, or None."""
    try:
        return importlib.import_module("scann")
    except ImportError:
        return None


def is_scann_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a searcher that ScaNN serialized."""
    return (Path(folder) / SCANN_CONFIG_FILE).is_file()


@dataclass(frozen=True)
class ScannPlan:
    """The ScaNN searcher for a database: ``method`` is ``"brute_force"``, ``"ah"`` or ``"partitioned_ah"``; the
    AH fields apply to the latter two, the tree fields to the last."""

    method: str
    reorder_k: int
    aiq_threshold: float
    dims_per_block: int
    num_leaves: int | None = None
    num_leaves_to_search: int | None = None
    training_sample_size: int | None = None


def plan_scann(
    pool_size: int,
    k: int,
    reorder_k: int | None = None,
    aiq_thld: float = 0.2,
    dims_per_block: int = 2,
    partioning_trainsize: int | None = None,
    num_leaves: int | None = None,
    num_leaves_to_search: int | None = None,
) -> ScannPlan:
    """The searcher for ``pool_size`` rows and ``k`` neighbours (see the module docstring); ``reorder_k``
    defaults to ``2 k``, and the tree settings left None to ``√N`` leaves, ``max(leaves // 20, 1)`` searched,
    ``N // 10`` training rows."""
    hashing = {"reorder_k": reorder_k or 2 * k, "aiq_threshold": aiq_thld, "dims_per_block": dims_per_block}
    if pool_size < BRUTE_FORCE_BELOW:
        return ScannPlan("brute_force", **hashing)
    if pool_size < HASHING_BELOW:
        return ScannPlan("ah", **hashing)
    leaves = num_leaves or int(math.sqrt(pool_size))
    return ScannPlan("partitioned_ah", **hashing, num_leaves=leaves,
                     num_leaves_to_search=num_leaves_to_search or max(leaves // 20, 1),
                     training_sample_size=partioning_trainsize or pool_size // 10)


def search_bruteforce(searcher: Any) -> Any:
    """A ScaNN builder → its exact (brute-force) searcher."""
    return searcher.score_brute_force().build()


def search_ah(searcher: Any, dims_per_block: int, aiq_threshold: float, reorder_k: int) -> Any:
    """A ScaNN builder → AH scoring (``dims_per_block``, anisotropic threshold) with the best ``reorder_k``
    candidates rescored exactly."""
    hashed = searcher.score_ah(dims_per_block, anisotropic_quantization_threshold=aiq_threshold)
    return hashed.reorder(reorder_k).build()


def search_partioned_ah(searcher: Any, dims_per_block: int, aiq_threshold: float, reorder_k: int,
                        partioning_trainsize: int, num_leaves: int, num_leaves_to_search: int) -> Any:
    """A ScaNN builder → a partitioning tree in front of :func:`search_ah`."""
    tree = searcher.tree(num_leaves=num_leaves, num_leaves_to_search=num_leaves_to_search,
                         training_sample_size=partioning_trainsize)
    return search_ah(tree, dims_per_block, aiq_threshold, reorder_k)


def build_scann(scann: ModuleType, unit_embeddings: np.ndarray, k: int, plan: ScannPlan,
                metric: str = "dot_product") -> Any:
    """The ScaNN searcher of ``plan`` over ``unit_embeddings`` ``(N, D)``, returning ``k`` neighbours."""
    builder = scann.scann_ops_pybind.builder(unit_embeddings, k, metric)
    if plan.method == "brute_force":
        return search_bruteforce(builder)
    if plan.method == "ah":
        return search_ah(builder, plan.dims_per_block, plan.aiq_threshold, plan.reorder_k)
    return search_partioned_ah(builder, plan.dims_per_block, plan.aiq_threshold, plan.reorder_k,
                               plan.training_sample_size, plan.num_leaves, plan.num_leaves_to_search)
