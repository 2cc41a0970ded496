"""Retrieval databases of the retrieval-augmented diffusion models (RDM): the CLIP image embeddings of a data set in
``.npz`` files under ``data/rdm/retrieval_databases/<name>/``, and where the searchers over them are kept."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

#: The databases the released RDMs were sampled with (``--database`` of ``scripts/knn2img.py``).
DATABASES = (
    "openimages",
    "artbench-art_nouveau",
    "artbench-baroque",
    "artbench-expressionism",
    "artbench-impressionism",
    "artbench-post_impressionism",
    "artbench-realism",
    "artbench-romanticism",
    "artbench-renaissance",
    "artbench-surrealism",
    "artbench-ukiyo_e",
)
#: Folders (relative to the working directory) of the databases and of their trained searchers, one per name.
DATABASE_ROOT = Path("data/rdm/retrieval_databases")
SEARCHER_ROOT = Path("data/rdm/searchers")
#: The array every database file holds: CLIP image embeddings ``(N, D)``; ``img_id`` and ``patch_coords`` may follow.
EMBEDDING_KEY = "embedding"
LAYOUT_HINT = ("one or more .npz files whose arrays share their first axis: 'embedding' (N, D) CLIP image "
               "embeddings, and optionally 'img_id' (N,) and 'patch_coords' (N, 4)")


def database_folder(name: str) -> Path:
    """``data/rdm/retrieval_databases/<name>``."""
    return DATABASE_ROOT / name


def searcher_folder(name: str) -> Path:
    """``data/rdm/searchers/<name>``."""
    return SEARCHER_ROOT / name


def database_files(folder: str | Path, flag: str = "--database") -> list[Path]:
    """The ``.npz`` files of a database folder, sorted by name (the order their rows are numbered in).

    Raises ``FileNotFoundError`` naming the folder, the flag it came from and what to put there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"retrieval database folder not found: {folder} (from {flag}); put the database "
                                f"there: {LAYOUT_HINT}")
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no .npz files in the retrieval database folder {folder} (from {flag}); put the "
                                f"database there: {LAYOUT_HINT}")
    return files


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of one ``.npz`` file (no pickled objects are ever loaded)."""
    try:
        with np.load(path) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as error:
        raise ValueError(f"cannot read retrieval database file {path}: {error}; save its arrays as numbers or "
                         "fixed-width strings (np.savez without object arrays)") from error


def load_database(folder: str | Path, flag: str = "--database") -> dict[str, np.ndarray]:
    """All ``.npz`` files of ``folder`` (:func:`database_files`) as one database: for each array name the files
    share, their arrays joined along the first axis in file-name order, so row ``j`` of every array describes entry
    ``j``. ``embedding`` ``(N, D)`` is required; ``ValueError`` names a file or array that breaks the layout."""
    files = database_files(folder, flag)
    progress = tqdm(files, desc=f"Loading {len(files)} database files", disable=len(files) < 2)
    parts = [_read_npz(path) for path in progress]
    names = [key for key in parts[0] if all(key in part for part in parts)]
    if EMBEDDING_KEY not in names:
        lacking = next(path for path, part in zip(files, parts) if EMBEDDING_KEY not in part)
        raise ValueError(f"retrieval database file {lacking} has no {EMBEDDING_KEY!r} array; expected {LAYOUT_HINT}")
    database = {key: np.concatenate([part[key] for part in parts]) for key in names}
    count = len(database[EMBEDDING_KEY])
    if database[EMBEDDING_KEY].ndim != 2:
        raise ValueError(f"the {EMBEDDING_KEY!r} arrays in {folder} have shape {database[EMBEDDING_KEY].shape}, "
                         f"not (N, D); expected {LAYOUT_HINT}")
    for key, values in database.items():
        if len(values) != count:
            raise ValueError(f"array {key!r} in {folder} has {len(values)} rows but {EMBEDDING_KEY!r} has {count}; "
                             f"expected {LAYOUT_HINT}")
    logger.info("retrieval database %s: %d embeddings of dimension %d", folder, count,
                database[EMBEDDING_KEY].shape[1])
    return database
