"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased estimate of the squared maximum mean
discrepancy between two feature sets under the cubic polynomial kernel

    k(x, y) = (xᵀy / D + 1)³
    MMD²_u = Σ_{i≠j} k(xᵢ, xⱼ) / (m(m−1)) + Σ_{i≠j} k(yᵢ, yⱼ) / (m(m−1)) − 2 Σ_{i,j} k(xᵢ, yⱼ) / m²

averaged over ``subsets`` random pairs of subsets of ``subset_size`` features each (drawn without replacement);
reported as mean ± standard deviation over the subsets. Computed by torch-fidelity's ``kid_features_to_metric``
(the reference implementation's estimator), given the same seed the numbers are torch-fidelity's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

#: torch-fidelity's defaults, also those of the KID paper's code.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def _as_float_tensor(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if tensor.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(tensor.shape)}")
    return tensor.detach().cpu().to(torch.float64)


def kernel_inception_distance(
    features1: np.ndarray | torch.Tensor,
    features2: np.ndarray | torch.Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of MMD²_u over ``subsets`` subset pairs of ``(N1, D)`` and ``(N2, D)`` features (float64).

    ``subset_size`` must not exceed N1 or N2 (a smaller set needs a smaller ``subset_size``).
    """
    first, second = _as_float_tensor(features1), _as_float_tensor(features2)
    if first.shape[1] != second.shape[1]:
        raise ValueError(f"KID needs features of one dimension, got {first.shape[1]} and {second.shape[1]}")
    smallest = min(len(first), len(second))
    if not 2 <= subset_size <= smallest:
        raise ValueError(f"KID subset size {subset_size} must be from 2 to the size of the smaller feature set "
                         f"({smallest}); choose a subset size of at most {smallest}")
    if subsets < 1:
        raise ValueError(f"KID needs at least one subset, got {subsets}")
    result = kid_features_to_metric(first, second, kid_subsets=subsets, kid_subset_size=subset_size,
                                    kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                    kid_kernel_poly_coef0=1, rng_seed=seed, verbose=False)
    return float(result[KEY_METRIC_KID_MEAN]), float(result[KEY_METRIC_KID_STD])
