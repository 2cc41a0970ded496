"""Making a searcher for a retrieval database (``scripts/train_searcher.py``): a ScaNN searcher when the ``scann``
package is installed, else the exact searcher's files (:mod:`ldm.retrieval.exact_files`), which ``knn2img.py``
reads the same way."""

from __future__ import annotations

import logging
from pathlib import Path

from ldm.retrieval.database import EMBEDDING_KEY, load_database
from ldm.retrieval.exact import unit_rows
from ldm.retrieval.exact_files import write_exact_searcher
from ldm.retrieval.scann_backend import build_scann, plan_scann, scann_module

logger = logging.getLogger(__name__)


def make_searcher(
    database: str | Path,
    target: str | Path,
    knn: int,
    metric: str = "dot_product",
    **scann_options: int | float | None,
) -> Path:
    """Load the database in folder ``database`` and write a searcher for ``knn`` neighbours over its unit
    embeddings into folder ``target`` (returned).

    With scann installed: the searcher of :func:`ldm.retrieval.scann_backend.plan_scann` for the database's size
    (``scann_options``: that function's ``reorder_k``, ``aiq_thld``, ``dims_per_block``, ``partioning_trainsize``,
    ``num_leaves``, ``num_leaves_to_search``), serialized. Without: the exact searcher's unit embeddings, which give
    the neighbours ScaNN's brute force gives (ScaNN is optional; its hashing searchers approximate them).
    """
    if knn < 1:
        raise ValueError(f"--knn {knn}: a searcher needs at least one neighbour; pass e.g. --knn 20")
    if metric != "dot_product":
        raise ValueError(f"metric {metric!r}: retrieval searches by inner product; use metric='dot_product'")
    embeddings = load_database(database, flag="--database")[EMBEDDING_KEY]
    target = Path(target)
    scann = scann_module()
    if scann is None:
        logger.info("scann is not installed (it is optional): writing the exact searcher, which finds the "
                    "neighbours ScaNN's brute force finds, for %d embeddings into %s", len(embeddings), target)
        write_exact_searcher(target, embeddings, knn)
        return target
    plan = plan_scann(len(embeddings), knn, **scann_options)
    logger.info("training a ScaNN searcher over %d embeddings: %s, metric %s", len(embeddings), plan, metric)
    searcher = build_scann(scann, unit_rows(embeddings).numpy(), knn, plan, metric)
    target.mkdir(parents=True, exist_ok=True)
    searcher.serialize(str(target))
    logger.info("saved the trained searcher under %s", target)
    return target
