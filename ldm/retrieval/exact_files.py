"""The exact searcher on disk: what ``scripts/train_searcher.py`` writes when ScaNN is not installed.

A searcher folder then holds ``normalized_embeddings.npy``, the database embeddings as unit rows ``(N, D)`` float32
(written and later read a block at a time through a memory map, so neither step holds the whole database twice),
and ``exact_searcher.json`` describing it (written last: a folder without it holds no finished searcher).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ldm.retrieval.exact import BLOCK_ROWS, unit_rows

EMBEDDINGS_FILE = "normalized_embeddings.npy"
INFO_FILE = "exact_searcher.json"
#: What ``exact_searcher.json`` says it is (checked when reading).
FORMAT = "ldm.retrieval exact maximum-inner-product searcher"


def has_exact_searcher(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished exact searcher."""
    return (Path(folder) / INFO_FILE).is_file()


def write_exact_searcher(folder: str | Path, embeddings: np.ndarray, knn: int, block_rows: int = BLOCK_ROWS) -> Path:
    """Write ``e_j / ‖e_j‖₂`` for every row of ``embeddings`` ``(N, D)`` and the description (``knn`` is recorded as
    the neighbour count the searcher was made for; any count can be searched). Returns the embeddings file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INFO_FILE).unlink(missing_ok=True)
    count, width = embeddings.shape
    target = folder / EMBEDDINGS_FILE
    unit = np.lib.format.open_memmap(target, mode="w+", dtype=np.float32, shape=(count, width))
    for start in range(0, count, block_rows):
        unit[start : start + block_rows] = unit_rows(embeddings[start : start + block_rows]).numpy()
    unit.flush()
    del unit
    info = {"format": FORMAT, "count": count, "dim": width, "knn": knn, "metric": "dot_product"}
    (folder / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return target


def read_exact_searcher(folder: str | Path, count: int) -> np.ndarray:
    """The unit embeddings of the exact searcher in ``folder`` as a read-only memory map ``(N, D)``.

    ``count``: the number of database rows it must cover; ``ValueError`` naming the fix when the files do not
    describe a searcher of that database (written for another database, or damaged).
    """
    folder = Path(folder)
    redo = f"run scripts/train_searcher.py again with --target_path {folder}"
    try:
        info = json.loads((folder / INFO_FILE).read_text())
        embeddings = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the exact searcher in {folder} ({error}); {redo}") from error
    if info.get("format") != FORMAT or embeddings.shape != (info.get("count"), info.get("dim")):
        raise ValueError(f"{folder / INFO_FILE} does not describe {folder / EMBEDDINGS_FILE}; {redo}")
    if info["count"] != count:
        raise ValueError(f"the searcher in {folder} covers {info['count']} embeddings but the database has {count} "
                         f"(it was made for another version of the database); {redo}")
    return embeddings
