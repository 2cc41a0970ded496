"""Probability-flow ODE samplers: Euler, Heun, DPM2, LMS (Karras et al. 2022) and DPM-Solver++(2M) (Lu et al. 2022).

All integrate dz/dσ = (z − D(z, σ))/σ from σ_0 down the list ``sigmas`` (ending in 0) with the denoiser
``model(z, σ·1_B, **extra_args)``. Euler, Heun and DPM2 take Karras's "churn" (Algorithm 2): before step i the
noise level is raised to σ̂ = σ_i (1 + γ_i) by adding fresh noise of variance σ̂² − σ_i², with
γ_i = min(S_churn/N, √2 − 1) for σ_i ∈ [S_tmin, S_tmax], else 0; they draw that noise with ``torch.randn_like``
once per step even when γ_i = 0, as k-diffusion does (the global generator advances the same way).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ldm.models.diffusion.k_samplers.common import SamplerRun, k_sampler, ode_derivative

__all__ = [
    "NO_CHURN",
    "Churn",
    "Move",
    "churn_gamma",
    "churn_step",
    "dpm2_move",
    "dpmpp_first_order",
    "euler_move",
    "heun_move",
    "lms_coefficients",
    "sample_dpm_2",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
    "sample_lms",
]

#: ``move(run, z, σ, σ_to, x̂_0) -> z at σ_to``: one deterministic step of the ODE from σ, where D(z, σ) = x̂_0.
Move = Callable[[SamplerRun, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Churn:
    """Karras's churn settings (Algorithm 2): S_churn, the σ range [S_tmin, S_tmax] it applies to, S_noise."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0


#: No churn: the plain ODE step (the noise is still drawn, see :func:`churn_step`).
NO_CHURN = Churn()


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


def euler_move(
    run: SamplerRun, z: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, denoised: torch.Tensor
) -> torch.Tensor:
    """One Euler step of dz/dσ = (z − x̂_0)/σ from σ to ``target``."""
    return z + ode_derivative(z, sigma, denoised) * (target - sigma)


def heun_move(
    run: SamplerRun, z: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, denoised: torch.Tensor
) -> torch.Tensor:
    """Heun's method: the mean of the slopes at σ and at the Euler predictor's ``target`` (Euler when it is 0)."""
    if target == 0:
        return euler_move(run, z, sigma, target, denoised)
    slope = ode_derivative(z, sigma, denoised)
    predictor = z + slope * (target - sigma)
    end_slope = ode_derivative(predictor, target, run.denoise(predictor, target))
    return z + (slope + end_slope) / 2 * (target - sigma)


def dpm2_move(
    run: SamplerRun, z: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, denoised: torch.Tensor
) -> torch.Tensor:
    """DPM2: the slope at the geometric midpoint σ_m = √(σ σ_to), reached by Euler, carries z to σ_to (Euler
    when σ_to = 0)."""
    if target == 0:
        return euler_move(run, z, sigma, target, denoised)
    sigma_mid = torch.lerp(sigma.log(), torch.as_tensor(target).log(), 0.5).exp()
    halfway = z + ode_derivative(z, sigma, denoised) * (sigma_mid - sigma)
    mid_slope = ode_derivative(halfway, sigma_mid, run.denoise(halfway, sigma_mid))
    return z + mid_slope * (target - sigma)


def _churned_run(move: Move, run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, churn: Churn) -> torch.Tensor:
    """The loop of Euler, Heun and DPM2: raise σ_i to σ̂ (:func:`churn_step`), D(ẑ, σ̂), callback, ``move`` to
    σ_{i+1}."""
    for i in run.steps(len(sigmas) - 1):
        gamma = churn_gamma(sigmas[i], len(sigmas) - 1, churn.s_churn, churn.s_tmin, churn.s_tmax)
        x, sigma_hat = churn_step(x, sigmas[i], gamma, churn.s_noise)
        denoised = run.denoise(x, sigma_hat)
        run.report(x, i, sigmas[i], sigma_hat, denoised)
        x = move(run, x, sigma_hat, sigmas[i + 1], denoised)
    return x


@k_sampler("Euler")
def sample_euler(run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, churn: Churn = NO_CHURN) -> torch.Tensor:
    """Karras et al. 2022, Algorithm 2 with Euler steps: z_{i+1} = ẑ + (σ_{i+1} − σ̂) (ẑ − D(ẑ, σ̂))/σ̂.

    ``x``: z at σ_0 ``(B, ...)``; ``sigmas``: ``(N + 1,)``, decreasing to 0. One model call per step.
    """
    return _churned_run(euler_move, run, x, sigmas, churn)


@k_sampler("Heun")
def sample_heun(run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, churn: Churn = NO_CHURN) -> torch.Tensor:
    """Karras et al. 2022, Algorithm 2 (Heun's 2nd-order method): the trapezoid of the slopes at σ̂ and at the
    Euler predictor's σ_{i+1}; the step to σ = 0 is a plain Euler step (2N − 1 model calls)."""
    return _churned_run(heun_move, run, x, sigmas, churn)


@k_sampler("DPM2")
def sample_dpm_2(run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, churn: Churn = NO_CHURN) -> torch.Tensor:
    """DPM2 (Crowson, after DPM-Solver-2 and Karras Algorithm 2): the midpoint rule at the geometric mean
    σ_m = √(σ̂ σ_{i+1}), z_{i+1} = ẑ + (σ_{i+1} − σ̂) f(ẑ + (σ_m − σ̂) f(ẑ, σ̂), σ_m), f = dz/dσ;
    the step to σ = 0 is a plain Euler step (2N − 1 model calls)."""
    return _churned_run(dpm2_move, run, x, sigmas, churn)


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


@k_sampler("LMS")
def sample_lms(run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, order: int = 4) -> torch.Tensor:
    """Linear multistep (Adams–Bashforth) in σ: z_{i+1} = z_i + Σ_j w_j f_{i−j}, f = dz/dσ, with the
    :func:`lms_coefficients` of the last min(i + 1, ``order``) noise levels. One model call per step."""
    if order < 1:
        raise ValueError(f"sample_lms needs order >= 1 (4 is the usual choice), got order={order}.")
    levels = sigmas.detach().cpu().double().numpy()
    history: list[torch.Tensor] = []  # slopes, newest first
    for i in run.steps(len(sigmas) - 1):
        denoised = run.denoise(x, sigmas[i])
        history = [ode_derivative(x, sigmas[i], denoised)] + history[: order - 1]
        run.report(x, i, sigmas[i], sigmas[i], denoised)
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


@k_sampler("DPM++ 2M")
def sample_dpmpp_2m(run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in λ = −log σ: the first-order step applied to
    D̃ = (1 + 1/(2r)) D_i − 1/(2r) D_{i−1}, r = h_{i−1}/h_i; first order on the first step, and the last step
    to σ = 0 returns D_i. One model call per step."""
    previous = None
    for i in run.steps(len(sigmas) - 1):
        denoised = run.denoise(x, sigmas[i])
        run.report(x, i, sigmas[i], sigmas[i], denoised)
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
