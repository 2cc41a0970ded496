"""Probability-flow ODE samplers: Euler, Heun, DPM2, LMS (Karras et al. 2022) and DPM-Solver++(2M) (Lu et al. 2022).

All integrate dz/dσ = (z − D(z, σ))/σ from σ_0 down the list ``sigmas`` (ending in 0) with the denoiser
``model(z, σ·1_B, **extra_args)``. Euler, Heun and DPM2 take Karras's "churn" (Algorithm 2): before step i the
noise level is raised to σ̂ = σ_i (1 + γ_i) by adding fresh noise of variance σ̂² − σ_i², with
γ_i = min(S_churn/N, √2 − 1) for σ_i ∈ [S_tmin, S_tmax], else 0; they draw that noise with ``torch.randn_like``
once per step even when γ_i = 0, as k-diffusion does (the global generator advances the same way).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ldm.models.diffusion.k_samplers.common import (
    Denoiser,
    StepCallback,
    extra_arguments,
    ode_derivative,
    report_step,
)
from ldm.models.diffusion.sampler_core import checked_function_keywords, progress

__all__ = [
    "call_denoiser",
    "churn_gamma",
    "churn_step",
    "dpmpp_first_order",
    "lms_coefficients",
    "sample_dpm_2",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
    "sample_lms",
]


def call_denoiser(model: Denoiser, x: torch.Tensor, sigma: torch.Tensor, extra_args: dict[str, Any]) -> torch.Tensor:
    """D(x, σ): the denoiser at one noise level ``sigma`` (0-dim) for every batch element of ``x`` ``(B, ...)``."""
    return model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)


def churn_gamma(sigma: torch.Tensor, steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras Algorithm 2: γ = min(S_churn / N, √2 − 1) if S_tmin ≤ σ ≤ S_tmax, else 0 (N = ``steps``)."""
    return min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0


def churn_step(x: torch.Tensor, sigma: torch.Tensor, gamma: float, s_noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ẑ, σ̂): σ̂ = σ (1 + γ), ẑ = z + S_noise ε √(σ̂² − σ²), ε = ``torch.randn_like(x)`` drawn even when γ = 0."""
    fresh = torch.randn_like(x) * s_noise
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + fresh * (sigma_hat**2 - sigma**2).sqrt()
    return x, sigma_hat


def _churned_derivative(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    i: int,
    extra_args: dict[str, Any],
    callback: Any,
    churn: tuple[float, float, float, float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared first stage of Euler/Heun/DPM2 step i: churn, D(ẑ, σ̂), callback; returns (ẑ, σ̂, dz/dσ)."""
    s_churn, s_tmin, s_tmax, s_noise = churn
    gamma = churn_gamma(sigmas[i], len(sigmas) - 1, s_churn, s_tmin, s_tmax)
    x, sigma_hat = churn_step(x, sigmas[i], gamma, s_noise)
    denoised = call_denoiser(model, x, sigma_hat, extra_args)
    report_step(callback, x, i, sigmas[i], sigma_hat, denoised)
    return x, sigma_hat, ode_derivative(x, sigma_hat, denoised)


@checked_function_keywords
@torch.no_grad()
def sample_euler(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Karras et al. 2022, Algorithm 2 with Euler steps: z_{i+1} = ẑ + (σ_{i+1} − σ̂) (ẑ − D(ẑ, σ̂))/σ̂.

    ``x``: z at σ_0 ``(B, ...)``; ``sigmas``: ``(N + 1,)``, decreasing to 0. One model call per step.
    """
    extra_args = extra_arguments(extra_args)
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    for i in progress(range(len(sigmas) - 1), "Euler", len(sigmas) - 1, disable):
        x, sigma_hat, slope = _churned_derivative(model, x, sigmas, i, extra_args, callback, churn)
        x = x + slope * (sigmas[i + 1] - sigma_hat)
    return x


@checked_function_keywords
@torch.no_grad()
def sample_heun(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Karras et al. 2022, Algorithm 2 (Heun's 2nd-order method): the trapezoid of the slopes at σ̂ and at the
    Euler predictor's σ_{i+1}; the step to σ = 0 is a plain Euler step (2N − 1 model calls)."""
    extra_args = extra_arguments(extra_args)
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    for i in progress(range(len(sigmas) - 1), "Heun", len(sigmas) - 1, disable):
        x, sigma_hat, slope = _churned_derivative(model, x, sigmas, i, extra_args, callback, churn)
        step = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + slope * step
            continue
        predictor = x + slope * step
        end_slope = ode_derivative(predictor, sigmas[i + 1], call_denoiser(model, predictor, sigmas[i + 1], extra_args))
        x = x + (slope + end_slope) / 2 * step
    return x


@checked_function_keywords
@torch.no_grad()
def sample_dpm_2(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM2 (Crowson, after DPM-Solver-2 and Karras Algorithm 2): the midpoint rule at the geometric mean
    σ_m = √(σ̂ σ_{i+1}), z_{i+1} = ẑ + (σ_{i+1} − σ̂) f(ẑ + (σ_m − σ̂) f(ẑ, σ̂), σ_m), f = dz/dσ;
    the step to σ = 0 is a plain Euler step (2N − 1 model calls)."""
    extra_args = extra_arguments(extra_args)
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    for i in progress(range(len(sigmas) - 1), "DPM2", len(sigmas) - 1, disable):
        x, sigma_hat, slope = _churned_derivative(model, x, sigmas, i, extra_args, callback, churn)
        if sigmas[i + 1] == 0:
            x = x + slope * (sigmas[i + 1] - sigma_hat)
            continue
        sigma_mid = torch.lerp(sigma_hat.log(), sigmas[i + 1].log(), 0.5).exp()
        halfway = x + slope * (sigma_mid - sigma_hat)
        mid_slope = ode_derivative(halfway, sigma_mid, call_denoiser(model, halfway, sigma_mid, extra_args))
        x = x + mid_slope * (sigmas[i + 1] - sigma_hat)
    return x


def lms_coefficients(nodes: np.ndarray, start: float, end: float) -> list[float]:
    """Adams–Bashforth weights on arbitrary nodes: w_j = ∫_start^end ℓ_j(τ) dτ, ℓ_j the Lagrange basis
    polynomial that is 1 at ``nodes[j]`` and 0 at the other nodes (newest node first, ``nodes[0] == start``).

    Exact (closed-form polynomial integration, in the shifted variable τ − start for conditioning).
    """
    shifted = np.asarray(nodes, dtype=np.float64) - start
    weights = []
    for j, node in enumerate(shifted):
        basis = np.polynomial.Polynomial([1.0])
        for other in np.delete(shifted, j):
            basis = basis * np.polynomial.Polynomial([-other, 1.0]) / (node - other)
        weights.append(float(basis.integ()(end - start)))
    return weights


@checked_function_keywords
@torch.no_grad()
def sample_lms(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    order: int = 4,
) -> torch.Tensor:
    """Linear multistep (Adams–Bashforth) in σ: z_{i+1} = z_i + Σ_j w_j f_{i−j}, f = dz/dσ, with the
    :func:`lms_coefficients` of the last min(i + 1, ``order``) noise levels. One model call per step."""
    if order < 1:
        raise ValueError(f"sample_lms needs order >= 1 (4 is the usual choice), got order={order}.")
    extra_args = extra_arguments(extra_args)
    levels = sigmas.detach().cpu().double().numpy()
    history: list[torch.Tensor] = []  # slopes, newest first
    for i in progress(range(len(sigmas) - 1), "LMS", len(sigmas) - 1, disable):
        denoised = call_denoiser(model, x, sigmas[i], extra_args)
        history = [ode_derivative(x, sigmas[i], denoised)] + history[: order - 1]
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        nodes = levels[i + 1 - len(history) : i + 1][::-1]
        weights = lms_coefficients(nodes, levels[i], levels[i + 1])
        x = x + sum(w * slope for w, slope in zip(weights, history))
    return x


def dpmpp_first_order(
    x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, data: torch.Tensor
) -> torch.Tensor:
    """DPM-Solver++ first-order step in λ = −log σ (= DDIM): z' = (σ'/σ) z + (1 − e^{−h}) x̂_0, h = λ' − λ."""
    ratio = sigma_next / sigma
    return ratio * x + (1 - ratio) * data


@checked_function_keywords
@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in λ = −log σ: the first-order step applied to
    D̃ = (1 + 1/(2r)) D_i − 1/(2r) D_{i−1}, r = h_{i−1}/h_i; first order on the first step, and the last step
    to σ = 0 returns D_i. One model call per step."""
    extra_args = extra_arguments(extra_args)
    previous = None
    for i in progress(range(len(sigmas) - 1), "DPM++ 2M", len(sigmas) - 1, disable):
        denoised = call_denoiser(model, x, sigmas[i], extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        elif previous is None:
            x = dpmpp_first_order(x, sigmas[i], sigmas[i + 1], denoised)
        else:
            r = (sigmas[i - 1] / sigmas[i]).log() / (sigmas[i] / sigmas[i + 1]).log()
            blend = torch.lerp(denoised, previous, -1 / (2 * r))
            x = dpmpp_first_order(x, sigmas[i], sigmas[i + 1], blend)
        previous = denoised
    return x
