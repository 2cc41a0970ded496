"""Generator metrics on features (ldm/evaluation/{frechet,kid,inception_score,precision_recall}.py): closed forms
computed independently here, and agreement with torch-fidelity / torchmetrics on the same arrays."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.metric_fid import fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torchmetrics.image.fid import _compute_fid
from torchmetrics.image.kid import poly_mmd

from ldm.evaluation.frechet import feature_statistics, fid_from_features, frechet_distance
from ldm.evaluation.inception_score import adm_splits, inception_score, inception_score_from_logits
from ldm.evaluation.kid import kernel_inception_distance
from ldm.evaluation.precision_recall import precision_recall


def gaussian_features(count: int, dim: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """``count`` samples of one correlated Gaussian per ``dim`` (the mixing matrix is fixed), ``shift + scale · z``."""
    mixing = np.random.default_rng(1234).normal(size=(dim, dim)) / np.sqrt(dim)
    return shift + scale * np.random.default_rng(seed).normal(size=(count, dim)) @ mixing


# ---- FID -------------------------------------------------------------------------------------------------------


def test_feature_statistics_are_mean_and_unbiased_covariance() -> None:
    x = gaussian_features(50, 6, 0)
    mu, sigma = feature_statistics(torch.from_numpy(x).float())
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(sigma, centred.T @ centred / (len(x) - 1), rtol=1e-5, atol=1e-6)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (6, 6)


def test_frechet_distance_matches_closed_form_with_scipy_sqrtm() -> None:
    mu1, s1 = feature_statistics(gaussian_features(400, 8, 1))
    mu2, s2 = feature_statistics(gaussian_features(300, 8, 2, shift=0.7, scale=1.4))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_known_gaussians() -> None:
    # diagonal covariances commute: tr((Σ1Σ2)^½) = Σ sqrt(a_i b_i), so d² = |Δμ|² + Σ (sqrt a_i − sqrt b_i)²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(5.0 + 1.0 + 1.0 + 0.0)


def test_identical_sets_have_zero_fid_even_with_singular_covariance() -> None:
    x = gaussian_features(10, 32, 3)  # 10 samples in 32 dimensions: rank-9 covariance
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    y = gaussian_features(10, 32, 4)
    assert np.isfinite(fid_from_features(x, y)) and fid_from_features(x, y) > 0


def test_fid_equals_torch_fidelity_and_torchmetrics() -> None:
    x, y = gaussian_features(300, 16, 5), gaussian_features(250, 16, 6, shift=0.3, scale=0.8)
    (mu1, s1), (mu2, s2) = feature_statistics(x), feature_statistics(y)
    ours = frechet_distance(mu1, s1, mu2, s2)
    fidelity = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)
    metrics = _compute_fid(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2)))
    assert ours == pytest.approx(fidelity["frechet_inception_distance"], rel=1e-8)
    assert ours == pytest.approx(float(metrics), rel=1e-8)


def test_frechet_distance_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


# ---- KID -------------------------------------------------------------------------------------------------------


def unbiased_poly_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """MMD²_u with k(a, b) = (aᵀb / d + 1)³, written from the definition."""
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    off = ~np.eye(m, dtype=bool)
    return kxx[off].sum() / (m * (m - 1)) + kyy[off].sum() / (m * (m - 1)) - 2 * kxy.sum() / (m * m)


def test_kid_of_whole_sets_is_the_unbiased_mmd_and_torchmetrics() -> None:
    x, y = gaussian_features(40, 5, 7), gaussian_features(40, 5, 8, shift=0.5)
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=40)  # every subset is the whole set
    assert std == pytest.approx(0.0, abs=1e-12)
    assert mean == pytest.approx(unbiased_poly_mmd(x, y), rel=1e-9)
    assert mean == pytest.approx(float(poly_mmd(torch.from_numpy(x), torch.from_numpy(y))), rel=1e-9)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two() -> None:
    x, y = gaussian_features(400, 8, 9), gaussian_features(400, 8, 10)
    mean, std = kernel_inception_distance(x, y, subsets=50, subset_size=100)
    assert abs(mean) < 3 * std
    shifted_mean, shifted_std = kernel_inception_distance(x, y + 1.0, subsets=50, subset_size=100)
    assert shifted_mean > 3 * shifted_std > 0


def test_kid_subset_size_above_the_set_is_an_error() -> None:
    with pytest.raises(ValueError, match="subset size 50"):
        kernel_inception_distance(np.zeros((20, 3)), np.zeros((30, 3)), subsets=2, subset_size=50)


# ---- Inception Score -------------------------------------------------------------------------------------------


def test_inception_score_of_uniform_predictions_is_one() -> None:
    mean, std = inception_score(np.full((100, 10), 0.1), splits=4)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("classes", [1, 4, 10])
def test_inception_score_of_balanced_one_hot_predictions_is_the_number_of_classes(classes: int) -> None:
    probs = np.eye(classes)[np.arange(20 * classes) % classes]
    mean, _ = inception_score(probs, splits=5)  # each split of 4·k consecutive rows holds every class 4 times
    assert mean == pytest.approx(classes)


def test_inception_score_equals_torch_fidelity_on_logits() -> None:
    logits = torch.from_numpy(np.random.default_rng(11).normal(size=(200, 12)) * 3)
    ours = inception_score_from_logits(logits, splits=10)
    theirs = isc_features_to_metric(logits, splits=10, shuffle=False)
    assert ours == pytest.approx((theirs["inception_score_mean"], theirs["inception_score_std"]), rel=1e-10)
    shuffled = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    assert inception_score_from_logits(logits, 10, shuffle_seed=2020) == pytest.approx(
        (shuffled["inception_score_mean"], shuffled["inception_score_std"]), rel=1e-10)


def test_inception_score_rejects_rows_that_are_not_probabilities() -> None:
    with pytest.raises(ValueError, match="summing to 1"):
        inception_score(np.ones((4, 3)), splits=1)
    assert adm_splits(50_000) == 10 and adm_splits(5_000) == 1 and adm_splits(12_000) == 3


# ---- precision / recall ----------------------------------------------------------------------------------------


def brute_force_precision_recall(gen: np.ndarray, real: np.ndarray, k: int) -> tuple[float, float]:
    """The definition with full distance matrices; the k-th neighbour excludes the point itself."""
    def radii(x: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    cross = np.linalg.norm(gen[:, None] - real[None], axis=-1)  # (N_g, N_r)
    precision = np.mean((cross <= radii(real)[None, :]).any(axis=1))
    recall = np.mean((cross.T <= radii(gen)[None, :]).any(axis=1))
    return float(precision), float(recall)


def test_precision_recall_of_identical_sets_is_one() -> None:
    x = gaussian_features(30, 4, 12)
    assert precision_recall(x, x) == (1.0, 1.0)


def test_precision_recall_of_far_apart_clusters_is_zero() -> None:
    x = gaussian_features(30, 4, 13)
    assert precision_recall(x, x + 1000.0) == (0.0, 0.0)


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_matches_the_definition(k: int) -> None:
    gen = gaussian_features(60, 3, 14, shift=1.5, scale=0.7).astype(np.float32)
    real = gaussian_features(80, 3, 15).astype(np.float32)
    ours = precision_recall(gen, real, neighborhood=k, batch_size=16)  # several blocks of the batched distances
    assert ours == pytest.approx(brute_force_precision_recall(gen, real, k), abs=1e-6)  # float32 means
    assert 0.0 < ours[0] < 1.0 and 0.0 < ours[1] < 1.0
