"""Exact k-nearest-neighbour search by maximum inner product, over a database read a block of rows at a time.

For unit queries ``q`` and database rows ``e_j`` the score is the cosine ``s_j = q·e_j / ‖e_j‖₂`` (with unit rows,
``‖q − e_j‖² = 2 − 2 s_j``: the largest inner products are the nearest points). The search keeps, per query, the k
best ``(score, row)`` pairs seen so far and merges each block's scores into them, so memory holds one block and the
running best, never the whole ``(queries, N)`` score matrix nor a normalised copy of the database. This returns the
neighbours that ScaNN's brute-force searcher returns and its hashing/partitioned searchers approximate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Database rows scored at once: a block of 65,536 CLIP ViT-L/14 embeddings (768 floats) is 192 MiB.
BLOCK_ROWS = 65536


def unit_rows(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(N, D) -> (N, D)`` float32: each row divided by its Euclidean norm (zero rows stay zero)."""
    return F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)


def _block(keys: Any, start: int, stop: int, normalize: bool) -> torch.Tensor:
    """Rows ``start:stop`` of ``keys`` (an array, a memory map or a tensor) as float32 on the CPU."""
    rows = keys[start:stop]
    if isinstance(rows, torch.Tensor):
        block = rows.detach().cpu().float()
    else:  # a copy: memory-mapped rows are read-only
        block = torch.tensor(np.asarray(rows, dtype=np.float32))
    return F.normalize(block, dim=-1) if normalize else block


def max_inner_product(
    queries: torch.Tensor, keys: Any, k: int, block_rows: int = BLOCK_ROWS, normalize_keys: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` rows of ``keys`` with the largest inner product with each query, best first.

    :param queries: ``(Q, D)`` query embeddings (used as given; normalise them for cosine scores).
    :param keys: ``(N, D)`` database embeddings: a NumPy array, a ``np.memmap`` or a tensor; only ``block_rows``
        rows of it are read into memory at a time.
    :param k: neighbours per query, ``1 <= k <= N``.
    :param normalize_keys: score against ``e_j / ‖e_j‖₂`` (the cosine) instead of ``e_j``.
    :return: ``(indices, scores)``, both ``(Q, k)``: row numbers into ``keys`` (int64) and their scores (float32),
        in descending score. Blocks of any size give the same result as one pass (up to the order of equal scores).
    """
    count = len(keys)
    if not 1 <= k <= count:
        raise ValueError(f"cannot return {k} neighbours from a database of {count} embeddings; "
                         f"ask for between 1 and {count} (--knn)")
    if block_rows < 1:
        raise ValueError(f"block_rows must be a positive number of database rows, not {block_rows}")
    q = queries.detach().cpu().float()
    best_scores = q.new_empty((q.shape[0], 0))
    best_rows = torch.empty((q.shape[0], 0), dtype=torch.long)
    for start in range(0, count, block_rows):
        stop = min(start + block_rows, count)
        scores = q @ _block(keys, start, stop, normalize_keys).T  # (Q, stop - start)
        rows = torch.arange(start, stop).expand(q.shape[0], -1)
        pooled_scores = torch.cat([best_scores, scores], dim=1)
        pooled_rows = torch.cat([best_rows, rows], dim=1)
        best_scores, position = pooled_scores.topk(min(k, pooled_scores.shape[1]), dim=1)
        best_rows = pooled_rows.gather(1, position)
    return best_rows, best_scores
