"""Make the nearest-neighbour searcher of a retrieval database for scripts/knn2img.py.

    python scripts/train_searcher.py -d data/rdm/retrieval_databases/openimages -t data/rdm/searchers/openimages

Reads every .npz file in --database (an 'embedding' array (N, D) each, rows joined in file-name order) and writes
into --target_path a searcher over the unit embeddings. ScaNN is optional: when the scann package is installed, a
ScaNN searcher is trained (brute force below 20,000 embeddings, asymmetric hashing below 100,000, partitioning and
hashing beyond) and serialized; without it, the unit embeddings for the exact search are written (the neighbours
ScaNN's brute force finds, which its hashing searchers approximate).

Module-level names other code imports from this script: ``load_datapool(dpath)``, ``train_searcher(opt, ...)``,
``search_bruteforce``, ``search_ah``, ``search_partioned_ah``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ldm.retrieval.database import load_database
from ldm.retrieval.scann_backend import search_ah, search_bruteforce, search_partioned_ah
from ldm.retrieval.training import make_searcher
from ldm.sampling_cli import run_script

__all__ = ["load_datapool", "main", "parse_args", "search_ah", "search_bruteforce", "search_partioned_ah",
           "train_searcher"]

logger = logging.getLogger("train_searcher")


def load_datapool(dpath: str | Path) -> dict[str, np.ndarray]:
    """Every array of the database folder ``dpath``, the files' rows joined (see ``ldm.retrieval.load_database``)."""
    return load_database(dpath, flag="--database")


def train_searcher(
    opt: argparse.Namespace,
    metric: str = "dot_product",
    partioning_trainsize: int | None = None,
    reorder_k: int | None = None,
    aiq_thld: float = 0.2,
    dims_per_block: int = 2,
    num_leaves: int | None = None,
    num_leaves_to_search: int | None = None,
) -> Path:
    """The searcher of ``opt.database`` for ``opt.knn`` neighbours, written to ``opt.target_path`` (returned);
    the other arguments tune the ScaNN searcher (``ldm.retrieval.scann_backend.plan_scann``) when scann is
    installed."""
    return make_searcher(opt.database, opt.target_path, opt.knn, metric, reorder_k=reorder_k, aiq_thld=aiq_thld,
                         dims_per_block=dims_per_block, partioning_trainsize=partioning_trainsize,
                         num_leaves=num_leaves, num_leaves_to_search=num_leaves_to_search)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", "-d", type=str, default="data/rdm/retrieval_databases/openimages",
                        help="path to folder containing the clip feature of the database")
    parser.add_argument("--target_path", "-t", type=str, default="data/rdm/searchers/openimages",
                        help="path to the target folder where the searcher shall be stored.")
    parser.add_argument("--knn", "-k", type=int, default=20,
                        help="number of nearest neighbors, for which the searcher shall be optimized")
    opt, ignored = parser.parse_known_args(argv)
    if ignored:
        logger.warning("ignoring arguments train_searcher does not take: %s", " ".join(ignored))
    return opt


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train_searcher(parse_args(argv))


if __name__ == "__main__":
    run_script(main)
