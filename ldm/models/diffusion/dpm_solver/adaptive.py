"""Adaptive step size for DPM-Solver: an embedded pair of singlestep solvers in λ (Lu et al. 2022a, §4.2).

Each try from s takes h in λ to t = t(λ_s + h) with a lower-order and a higher-order update (the higher one
reusing the lower one's model values) and scores their difference (Jolicoeur-Martineau et al. 2021):

(1) δ = max(atol, rtol · max(|x_low|, |x_prev|)),  E = max over the batch of RMS((x_high − x_low)/δ);
(2) E ≤ 1 accepts: x ← x_high, s ← t, x_prev ← x_low;
(3) in any case h ← min(θ h E^{−1/k}, λ_{t_0} − λ_s) for the higher order k.

The run ends when the mean |s − t_0| falls to ``t_err`` or no λ is left to cover.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: ``lower(x, s, t) -> (x_t, cached model values)`` and ``higher(x, s, t, **cached) -> x_t``.
EmbeddedPair = tuple[Callable[..., tuple[torch.Tensor, dict]], Callable[..., torch.Tensor]]


@dataclass(frozen=True)
class Tolerance:
    """The controller's settings: ``atol``/``rtol`` of eq. (1), safety factor ``theta`` of eq. (3), and the end
    tolerance ``t_err`` on |s − t_0|."""

    atol: float = 0.0078
    rtol: float = 0.05
    theta: float = 0.9
    t_err: float = 1e-5


def scaled_error(x_low: torch.Tensor, x_high: torch.Tensor, x_prev: torch.Tensor, atol: float, rtol: float):
    """Eq. (1): E, a 0-dim tensor, from three ``(B, ...)`` states."""
    delta = (rtol * torch.maximum(x_low.abs(), x_prev.abs())).clamp(min=atol)
    return ((x_high - x_low) / delta).flatten(1).square().mean(dim=1).sqrt().max()


def integrate_adaptively(
    x: torch.Tensor,
    pair: EmbeddedPair,
    noise_schedule: Any,
    order: int,
    ends: tuple[float, float],
    h_init: float,
    tolerance: Tolerance,
) -> tuple[torch.Tensor, int]:
    """Integrate from ``ends[0]`` to ``ends[1]`` by eqs. (1)–(3), starting with h = ``h_init``; returns the
    state ``(B, ...)`` and the number of model calls (``order`` per try)."""
    lower, higher = pair
    t_start, t_end = ends
    time_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = torch.full((x.shape[0],), float(t_start), dtype=time_dtype, device=x.device)
    lambda_s = noise_schedule.marginal_lambda(s)
    lambda_end = noise_schedule.marginal_lambda(torch.full_like(s, float(t_end)))
    h = torch.full_like(s, float(h_init))
    x_prev, calls = x, 0
    while (s - t_end).abs().mean() > tolerance.t_err and bool((lambda_end > lambda_s).any()):
        t = noise_schedule.inverse_lambda(lambda_s + h)
        x_low, cached = lower(x, s, t)
        x_high = higher(x, s, t, **cached)
        error = scaled_error(x_low, x_high, x_prev, tolerance.atol, tolerance.rtol)
        calls += order
        if not torch.isfinite(error):
            raise FloatingPointError(f"the adaptive DPM-Solver got a non-finite error estimate at t={s[0].item()}.")
        if error <= 1.0:
            x, x_prev, s = x_high, x_low, t
            lambda_s = noise_schedule.marginal_lambda(s)
        growth = error.double().pow(-1.0 / order).to(h.dtype)
        h = torch.minimum(tolerance.theta * h * growth, lambda_end - lambda_s)
    return x, calls
