"""Improved precision and recall (Kynkäänniemi et al. 2019) of generated features against real features.

Each set's manifold is the union of balls around its points, the ball of point φ having the radius of its k-th
nearest neighbour within the same set (k = 3 by default, the paper's and the ADM evaluator's choice):

    precision = fraction of generated φ_g inside some real ball:      ∃ r: ‖φ_g − φ_r‖ ≤ NN_k(φ_r)
    recall    = fraction of real φ_r inside some generated ball:      ∃ g: ‖φ_r − φ_g‖ ≤ NN_k(φ_g)

Distances are computed by torch-fidelity's batched ``calculate_precision_recall_part`` (``torch.cdist`` on
blocks of ``batch_size`` rows, so memory stays O(batch_size · N)), on the device the features are moved to.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_prc import calculate_precision_recall_part

#: The neighbourhood size of the paper and of the ADM evaluator.
PR_NEIGHBORHOOD = 3
PR_BATCH_SIZE = 10_000


def precision_recall(
    generated: np.ndarray | torch.Tensor,
    real: np.ndarray | torch.Tensor,
    neighborhood: int = PR_NEIGHBORHOOD,
    batch_size: int = PR_BATCH_SIZE,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """(precision, recall) of ``generated`` ``(N_g, D)`` against ``real`` ``(N_r, D)`` features, k-NN radii."""
    sets = []
    for name, features in (("generated", generated), ("real", real)):
        tensor = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
        if tensor.ndim != 2:
            raise ValueError(f"{name} features must be (N, D), got shape {tuple(tensor.shape)}")
        if len(tensor) <= neighborhood:
            raise ValueError(f"precision/recall with k = {neighborhood} needs more than {neighborhood} {name} "
                             f"samples, got {len(tensor)}; use more samples or a smaller neighbourhood")
        sets.append(tensor.detach().to(device, torch.float32))
    if sets[0].shape[1] != sets[1].shape[1]:
        raise ValueError(f"precision/recall needs features of one dimension, got {sets[0].shape[1]} and "
                         f"{sets[1].shape[1]}")
    precision, recall = calculate_precision_recall_part(sets[0], sets[1], neighborhood, batch_size)
    return float(precision), float(recall)
