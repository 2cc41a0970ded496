"""``Searcher``: the k database embeddings nearest to CLIP queries, for retrieval-augmented sampling
(``scripts/knn2img.py``), with the original's constructor, methods and result dictionary."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ldm.retrieval.database import DATABASES, EMBEDDING_KEY, database_folder, load_database, searcher_folder
from ldm.retrieval.exact import max_inner_product, unit_rows
from ldm.retrieval.exact_files import has_exact_searcher, read_exact_searcher, write_exact_searcher
from ldm.retrieval.scann_backend import ScannPlan, build_scann, is_scann_folder, scann_module

logger = logging.getLogger(__name__)


class Searcher:
    """Nearest neighbours by cosine similarity over the retrieval database ``database`` (one of :data:`DATABASES`).

    The database is read from ``data/rdm/retrieval_databases/<database>/`` (``database_path``) and the searcher from
    ``data/rdm/searchers/<database>/`` (``searcher_savedir``), relative to the working directory. The search is
    exact: the k largest inner products of the unit query with the unit database embeddings
    (:func:`ldm.retrieval.exact.max_inner_product`, a block of rows at a time) — the neighbours that ScaNN's
    brute-force searcher returns and its hashing searchers approximate. It reads the unit embeddings
    ``scripts/train_searcher.py`` wrote when that folder has them, else normalises the database's as it goes.
    Only when the ``scann`` package is installed and the folder holds a searcher ScaNN serialized is that one used.
    A missing database ends in ``FileNotFoundError`` naming the folder and what belongs there.

    ``retriever_version``: the CLIP model of :attr:`retriever` (built on first use; sampling never needs it).
    """

    def __init__(self, database: str, retriever_version: str = "ViT-L/14", *,
                 database_path: str | Path | None = None, searcher_savedir: str | Path | None = None) -> None:
        if database not in DATABASES:
            raise ValueError(f"unknown retrieval database {database!r}; choose one of {', '.join(DATABASES)}")
        self.database_name = database
        self.database_path = Path(database_path or database_folder(database))
        self.searcher_savedir = Path(searcher_savedir or searcher_folder(database))
        self.retriever_version = retriever_version
        self._retriever: torch.nn.Module | None = None
        self.searcher: Any = None
        self.keys: Any = None
        self.unit_keys = False
        self.load_database()
        self.load_searcher()

    @property
    def backend(self) -> str:
        """``"scann"``, ``"exact-file"`` (train_searcher's unit embeddings) or ``"exact"`` (the database itself)."""
        if self.searcher is not None:
            return "scann"
        return "exact-file" if self.unit_keys else "exact"

    @property
    def retriever(self) -> torch.nn.Module:
        """The CLIP image embedder the database was made with (``FrozenClipImageEmbedder(retriever_version)``)."""
        if self._retriever is None:
            from ldm.modules.encoders.openai_clip_embedders import FrozenClipImageEmbedder

            self._retriever = FrozenClipImageEmbedder(model=self.retriever_version)
            if torch.cuda.is_available():
                self._retriever.cuda()
        return self._retriever

    def load_database(self) -> None:
        """Read the database's ``.npz`` files into :attr:`database` (``embedding``, ``img_id``, ``patch_coords``)."""
        self.database = load_database(self.database_path, flag=f"--database {self.database_name}")

    def _search_database_directly(self) -> None:
        self.searcher, self.keys, self.unit_keys = None, self.database[EMBEDDING_KEY], False

    def load_searcher(self) -> None:
        """Pick the search (see the class docstring) from what :attr:`searcher_savedir` holds."""
        folder, scann = self.searcher_savedir, scann_module()
        count = len(self.database[EMBEDDING_KEY])
        if scann is not None and is_scann_folder(folder):
            logger.info("loading the ScaNN searcher of %s from %s", self.database_name, folder)
            self.searcher, self.keys = scann.scann_ops_pybind.load_searcher(str(folder)), None
        elif has_exact_searcher(folder):
            self.searcher, self.keys, self.unit_keys = None, read_exact_searcher(folder, count), True
        else:
            if is_scann_folder(folder):
                logger.info("%s holds a ScaNN searcher but scann is not installed; searching exactly instead",
                            folder)
            else:
                logger.info("no searcher in %s: searching the %d database embeddings exactly (scripts/"
                            "train_searcher.py writes one)", folder, count)
            self._search_database_directly()

    def train_searcher(self, k: int, metric: str = "dot_product", searcher_savedir: str | Path | None = None) -> None:
        """Make a searcher for ``k`` neighbours over the unit database embeddings: ScaNN's brute force when scann
        is installed, else the exact search (its files written to ``searcher_savedir`` when given)."""
        if metric != "dot_product":
            raise ValueError(f"metric {metric!r}: retrieval searches by inner product; use metric='dot_product'")
        scann = scann_module()
        embeddings = self.database[EMBEDDING_KEY]
        if scann is not None:
            brute_force = ScannPlan("brute_force", reorder_k=2 * k, aiq_threshold=0.2, dims_per_block=2)
            self.searcher = build_scann(scann, unit_rows(embeddings).numpy(), k, brute_force, metric)
            if searcher_savedir is not None:
                Path(searcher_savedir).mkdir(parents=True, exist_ok=True)
                self.searcher.serialize(str(searcher_savedir))
        elif searcher_savedir is not None:
            write_exact_searcher(searcher_savedir, embeddings, k)
            self.searcher, self.unit_keys = None, True
            self.keys = read_exact_searcher(searcher_savedir, len(embeddings))
        else:
            self._search_database_directly()

    def _nearest(self, queries: torch.Tensor, k: int) -> np.ndarray:
        if self.searcher is not None:
            rows, _ = self.searcher.search_batched(queries.numpy(), final_num_neighbors=k)
            return np.asarray(rows, dtype=np.int64)
        rows, _ = max_inner_product(queries, self.keys, k, normalize_keys=not self.unit_keys)
        return rows.numpy()

    def search(self, x: torch.Tensor | np.ndarray, k: int) -> dict[str, Any]:
        """The ``k`` nearest database entries of each query, nearest first.

        :param x: ``(B, D)`` query embeddings, or ``(B, T, D)`` tokens of which the first is the query.
        :return: ``nn_embeddings`` ``(B, k, D)`` (unit rows), ``nns`` ``(B, k)`` row numbers, ``img_ids`` and
            ``patch_coords`` of those rows (None where the database has no such array), ``queries`` ``(B, D)`` as
            given, ``q_embeddings`` ``(B, D)`` unit queries, and ``exec_time`` (seconds the search took).
        """
        given = torch.as_tensor(x).detach().cpu().float()
        if given.dim() == 3:
            given = given[:, 0]
        queries = F.normalize(given, dim=-1)
        started = time.perf_counter()
        nns = self._nearest(queries, k)
        elapsed = time.perf_counter() - started
        found = self.database[EMBEDDING_KEY][nns]  # (B, k, D)
        extras = {name: self.database[key][nns] if key in self.database else None
                  for name, key in (("img_ids", "img_id"), ("patch_coords", "patch_coords"))}
        return {
            "nn_embeddings": F.normalize(torch.from_numpy(found.astype(np.float32)), dim=-1).numpy(),
            **extras,
            "queries": given.numpy(),
            "exec_time": elapsed,
            "nns": nns,
            "q_embeddings": queries.numpy(),
        }

    def __call__(self, x: torch.Tensor | np.ndarray, n: int) -> dict[str, Any]:
        """:meth:`search` ``(x, n)``."""
        return self.search(x, n)
