"""Fréchet distance between two Gaussians fitted to feature sets (FID when the features are Inception pool3).

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)

The trace of the matrix square root is computed from the symmetric product ``Σ₁^½ Σ₂ Σ₁^½``, which has the
same eigenvalues as ``Σ₁ Σ₂`` but is symmetric positive semi-definite, so ``eigh`` returns real eigenvalues and
rounding can only produce tiny negative ones (clipped to 0): tr((Σ₁Σ₂)^½) = Σᵢ √λᵢ(Σ₁^½ Σ₂ Σ₁^½). This is as
exact as ``scipy.linalg.sqrtm`` on well-conditioned inputs and never returns a complex or NaN result on
singular covariances (fewer samples than feature dimensions).
"""

from __future__ import annotations

import numpy as np
import torch


def _as_float64_matrix(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """``features`` as a ``(N, D)`` float64 array (a torch tensor is detached and moved to the CPU)."""
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {array.shape}")
    if array.shape[0] < 2:
        raise ValueError(f"feature statistics need at least 2 samples, got {array.shape[0]}")
    return array


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (divided by N − 1) of ``(N, D)`` features, float64."""
    array = _as_float64_matrix(features)
    mu = array.mean(axis=0)
    sigma = np.cov(array, rowvar=False, ddof=1)
    return mu, np.atleast_2d(sigma)


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric positive semi-definite matrix (negative rounding eigenvalues → 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((Σ₁ Σ₂)^½) for covariance matrices, via the eigenvalues of the symmetric ``Σ₁^½ Σ₂ Σ₁^½``."""
    root1 = _symmetric_sqrt(np.asarray(sigma1, dtype=np.float64))
    middle = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½) for means ``(D,)`` and covariances ``(D, D)``."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must both be (D,), got {mu1.shape} and {mu2.shape}")
    dim = mu1.shape[0]
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"covariances must both be ({dim}, {dim}), got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(distance, 0.0))


def fid_from_features(features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two ``(N, D)`` feature sets."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
