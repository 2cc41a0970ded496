"""Retrieval for the retrieval-augmented diffusion models (RDM): CLIP-embedding databases, their nearest-neighbour
search, and the conditioning it gives.

- :mod:`~ldm.retrieval.database`: the ``.npz`` databases under ``data/rdm/retrieval_databases/<name>/``.
- :mod:`~ldm.retrieval.exact`: exact maximum-inner-product search, a block of database rows at a time.
- :mod:`~ldm.retrieval.exact_files`: the exact searcher on disk (``data/rdm/searchers/<name>/``).
- :mod:`~ldm.retrieval.scann_backend`: ScaNN, used only when installed.
- :mod:`~ldm.retrieval.searcher`: ``Searcher``, the search ``scripts/knn2img.py`` runs.
- :mod:`~ldm.retrieval.training`: what ``scripts/train_searcher.py`` writes.
- :mod:`~ldm.retrieval.conditioning`: text embedding + neighbours → cross-attention context.
- :mod:`~ldm.retrieval.sampling`: the sampling loop of ``scripts/knn2img.py``.
"""

from ldm.retrieval.conditioning import join_neighbours, retrieval_conditioning
from ldm.retrieval.database import DATABASES, database_folder, load_database, searcher_folder
from ldm.retrieval.exact import max_inner_product
from ldm.retrieval.searcher import Searcher

__all__ = [
    "DATABASES",
    "Searcher",
    "database_folder",
    "join_neighbours",
    "load_database",
    "max_inner_product",
    "retrieval_conditioning",
    "searcher_folder",
]
