"""Inception Score (Salimans et al. 2016) from class probabilities p(y|x) of a classifier:

    IS = exp( E_x KL(p(y|x) ‖ p(y)) ),   p(y) = E_x p(y|x),   KL(p ‖ q) = Σ_y p_y (log p_y − log q_y)

computed on each of ``splits`` consecutive chunks of the samples and reported as mean ± std over the chunks.
0 · log 0 counts as 0, so one-hot predictions are allowed: uniform predictions give IS = 1, one-hot
predictions spread evenly over k classes give IS = k.

Conventions differ between evaluators: torch-fidelity shuffles and uses 10 splits; the ADM evaluator does not
shuffle and splits into chunks of 5,000 samples (one chunk for 5k samples, 10 for 50k). Both are reachable here.
"""

from __future__ import annotations

import numpy as np
import torch

#: The number of splits of the Inception-score papers and of torch-fidelity.
IS_SPLITS = 10


def _probabilities(probs: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = probs if isinstance(probs, torch.Tensor) else torch.from_numpy(np.asarray(probs))
    tensor = tensor.detach().cpu().to(torch.float64)
    if tensor.ndim != 2:
        raise ValueError(f"class probabilities must be (N, K), got shape {tuple(tensor.shape)}")
    if (tensor < 0).any() or not torch.allclose(tensor.sum(dim=1), torch.ones(len(tensor), dtype=torch.float64),
                                                atol=1e-4):
        raise ValueError("class probabilities must be non-negative rows summing to 1; pass softmax outputs "
                         "(or use inception_score_from_logits)")
    return tensor


def inception_score(
    probs: np.ndarray | torch.Tensor, splits: int = IS_SPLITS, shuffle_seed: int | None = None
) -> tuple[float, float]:
    """(mean, std) of exp(E KL(p(y|x) ‖ p(y))) over ``splits`` chunks of ``probs`` ``(N, K)`` (rows sum to 1).

    ``shuffle_seed``: permute the rows with this seed first (None: keep their order).
    """
    p = _probabilities(probs)
    if not 1 <= splits <= len(p):
        raise ValueError(f"Inception Score splits must be from 1 to the number of samples ({len(p)}), got {splits}")
    if shuffle_seed is not None:
        p = p[torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(len(p)))]
    scores = []
    for chunk in torch.tensor_split(p, splits):
        marginal = chunk.mean(dim=0, keepdim=True)
        kl = torch.xlogy(chunk, chunk) - torch.xlogy(chunk, marginal.expand_as(chunk))
        scores.append(float(kl.sum(dim=1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score_from_logits(
    logits: np.ndarray | torch.Tensor, splits: int = IS_SPLITS, shuffle_seed: int | None = None
) -> tuple[float, float]:
    """:func:`inception_score` of ``softmax(logits)`` for logits ``(N, K)`` (computed in float64)."""
    tensor = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
    return inception_score(tensor.detach().cpu().to(torch.float64).softmax(dim=1), splits, shuffle_seed)


def adm_splits(count: int, split_size: int = 5000) -> int:
    """The number of chunks the ADM evaluator uses for ``count`` samples: ceil(count / 5000)."""
    return max(1, -(-count // split_size))
