"""Stochastic DPM-Solver++ samplers: DPM++ SDE, DPM++ 2M SDE and DPM++ 3M SDE (k-diffusion's ``sample_dpmpp_*sde``).

In λ = −log σ and h = λ' − λ, the reverse SDE of z = x_0 + σ ε with noise weight η, data prediction x̂_0 held
fixed over the step, integrates exactly to the first-order step (Lu et al. 2022, DPM-Solver++ §4, SDE form)

    z' = (σ'/σ) e^{−ηh} z + (1 − e^{−ĥ}) x̂_0 + σ' √(1 − e^{−2ηh}) ξ,   ĥ = (1 + η) h,

(η = 0: the DDIM / DPM-Solver++(1) step; η = 1: the DDPM posterior). The multistep samplers add the integral of
the linear (2M) or quadratic (3M) extrapolation of x̂_0(λ) through the previous steps' values against the same
kernel; DPM++ SDE is the two-stage DPM-Solver++(2S) whose stages are ancestral steps. By default the noise ξ is a
Brownian tree over the run's σ range (:class:`~.noise.BrownianTreeNoiseSampler`, seeded from the global generator).
"""

from __future__ import annotations

import torch

from ldm.models.diffusion.k_samplers.common import SamplerRun, k_sampler, ode_derivative
from ldm.models.diffusion.k_samplers.noise import (
    ANCESTRAL_NOISE,
    BrownianTreeNoiseSampler,
    NoiseOptions,
    NoiseSampler,
    get_ancestral_step,
)
from ldm.models.diffusion.k_samplers.ode import dpmpp_first_order

__all__ = ["sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_dpmpp_sde", "sde_first_order"]

SOLVER_TYPES = ("midpoint", "heun")


def _lam(sigma: torch.Tensor) -> torch.Tensor:
    """λ = −log σ."""
    return -sigma.log()


def _sigma_of(lam: torch.Tensor) -> torch.Tensor:
    """σ = e^{−λ}."""
    return (-lam).exp()


def _brownian_default(x: torch.Tensor, sigmas: torch.Tensor, noise_sampler: NoiseSampler | None) -> NoiseSampler:
    """``noise_sampler``, or a Brownian tree over [min positive σ, max σ] seeded from the global generator."""
    if noise_sampler is not None:
        return noise_sampler
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max())


def sde_first_order(
    z: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, denoised: torch.Tensor, eta: float
) -> torch.Tensor:
    """The noise-free part of the first-order SDE step: (σ'/σ) e^{−ηh} z + (1 − e^{−(1+η)h}) x̂_0, h = λ' − λ.

    ``z``, ``denoised``: ``(B, ...)``; ``sigma``, ``sigma_next``: 0-dim, both > 0.
    """
    h_hat = (_lam(sigma_next) - _lam(sigma)) * (eta + 1)
    return (-h_hat).exp() * z - (-h_hat).expm1() * denoised


# --------------------------------------------------------------------------------------------------------
# DPM++ SDE: two ancestral stages
# --------------------------------------------------------------------------------------------------------


def _ancestral_stage(
    z: torch.Tensor,
    sigma: torch.Tensor,
    sigma_to: torch.Tensor,
    denoised: torch.Tensor,
    eta: float,
    noise: tuple[NoiseSampler, float],
) -> torch.Tensor:
    """DPM-Solver++(1) from σ to σ_down, then S_noise σ_up ξ(σ, σ_to) (:func:`get_ancestral_step`)."""
    noise_sampler, s_noise = noise
    sigma_down, sigma_up = get_ancestral_step(sigma, sigma_to, eta)
    moved = dpmpp_first_order(z, sigma, sigma_down, denoised)
    return moved + noise_sampler(sigma, sigma_to) * s_noise * sigma_up


@k_sampler("DPM++ SDE")
def sample_dpmpp_sde(
    run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseOptions = ANCESTRAL_NOISE, r: float = 1 / 2
) -> torch.Tensor:
    """DPM++ SDE: stochastic DPM-Solver++(2S) with intermediate λ_s = λ + r h (Lu et al. 2022, Algorithm 1):

    u = A(z, σ → σ_s; x̂_0),   z' = A(z, σ → σ'; (1 − 1/(2r)) x̂_0 + 1/(2r) D(u, σ_s)),

    A the ancestral stage (DPM-Solver++(1) to σ_down, then S_noise σ_up ξ). Both stages draw noise, ξ(σ, σ_s) then
    ξ(σ, σ') (also with η = 0), σ values taken through λ and back; the step to σ = 0 is one Euler step.
    ``x``: ``(B, ...)``; ``sigmas``: ``(N + 1,)`` ending in 0; 2N − 1 model calls.
    """
    stage_noise = (_brownian_default(x, sigmas, noise.noise_sampler), noise.s_noise)
    weight = 1 / (2 * r)  # of the second stage's x̂_0
    for i in run.steps(len(sigmas) - 1):
        denoised = run.denoise(x, sigmas[i])
        run.report(x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x - ode_derivative(x, sigmas[i], denoised) * sigmas[i]
            continue
        lam, lam_next = _lam(sigmas[i]), _lam(sigmas[i + 1])
        sigma, sigma_s, sigma_next = (_sigma_of(v) for v in (lam, lam + (lam_next - lam) * r, lam_next))
        probe = _ancestral_stage(x, sigma, sigma_s, denoised, noise.eta, stage_noise)
        blended = torch.lerp(denoised, run.denoise(probe, sigma_s), weight)
        x = _ancestral_stage(x, sigma, sigma_next, blended, noise.eta, stage_noise)
    return x


# --------------------------------------------------------------------------------------------------------
# DPM++ 2M SDE and 3M SDE: multistep
# --------------------------------------------------------------------------------------------------------


def _phi(h_hat: torch.Tensor) -> torch.Tensor:
    """ψ(ĥ) = 1 − (1 − e^{−ĥ})/ĥ = ∫_0^1 ĥ e^{−ĥ(1−τ)} τ dτ, the weight of a slope term over the step."""
    return (-h_hat).expm1() / h_hat + 1


def _multistep_correction(
    denoised: torch.Tensor,
    history: list[tuple[torch.Tensor, torch.Tensor]],
    h: torch.Tensor,
    h_hat: torch.Tensor,
    solver_type: str,
) -> torch.Tensor | float:
    """The higher-order terms through the earlier x̂_0 values ``history`` = [(x̂_0, h) of step i−1, of i−2, ...].

    With the h-scaled divided differences δ_j = (x̂_0^{(i−j+1)} − x̂_0^{(i−j)}) h/h_{i−j}:
    one earlier value: ψ(ĥ) δ_1 ("heun"), or ½(1 − e^{−ĥ}) δ_1 ("midpoint");
    two: ψ(ĥ) D_1 − (ψ(ĥ)/ĥ − ½) D_2 with D_1 = δ_1 + (δ_1 − δ_2) h_{i−1}/(h_{i−1} + h_{i−2}),
    D_2 = (δ_1 − δ_2) h/(h_{i−1} + h_{i−2}) (the slope and curvature of the quadratic through three values).
    """
    if not history:
        return 0.0
    previous, h_1 = history[0]
    delta_1 = (denoised - previous) / (h_1 / h)
    if len(history) == 1:
        if solver_type == "midpoint":
            return -0.5 * (-h_hat).expm1() * delta_1
        return _phi(h_hat) * delta_1
    older, h_2 = history[1]
    delta_2 = (previous - older) / (h_2 / h)
    spread = (h_1 + h_2) / h
    slope = delta_1 + (delta_1 - delta_2) * (h_1 / h) / spread
    curvature = (delta_1 - delta_2) / spread
    weight = _phi(h_hat)
    return weight * slope - (weight / h_hat - 0.5) * curvature


def _multistep_sde_run(
    run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseOptions, order: int, solver_type: str
) -> torch.Tensor:
    """The loop of the multistep SDE samplers: first-order SDE step + correction of up to ``order`` − 1 earlier
    x̂_0 values + σ' √(1 − e^{−2ηh}) S_noise ξ(σ, σ') (drawn only when η ≠ 0); the step to σ = 0 returns x̂_0."""
    eta = noise.eta
    noise_sampler = _brownian_default(x, sigmas, noise.noise_sampler)
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (x̂_0, h) of the earlier steps, newest first
    for i in run.steps(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        run.report(x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = _lam(sigma_next) - _lam(sigma)
        h_hat = h * (eta + 1)
        x = sde_first_order(x, sigma, sigma_next, denoised, eta)
        x = x + _multistep_correction(denoised, history, h, h_hat, solver_type)
        if eta:
            spread = sigma_next * (-(-2 * eta * h).expm1()).sqrt()
            x = x + noise_sampler(sigma, sigma_next) * spread * noise.s_noise
        history = [(denoised, h)] + history[: order - 2]
    return x


@k_sampler("DPM++ 2M SDE")
def sample_dpmpp_2m_sde(
    run: SamplerRun,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noise: NoiseOptions = ANCESTRAL_NOISE,
    solver_type: str = "midpoint",
) -> torch.Tensor:
    """DPM++ 2M SDE: the first-order SDE step plus the linear extrapolation of x̂_0 through the previous step's,
    weighted ½(1 − e^{−ĥ}) (``solver_type="midpoint"``) or ψ(ĥ) = 1 − (1 − e^{−ĥ})/ĥ (``"heun"``), ĥ = (1 + η)h.

    First order on the first step; the step to σ = 0 returns x̂_0. ``x``: ``(B, ...)``; ``sigmas``: ``(N + 1,)``;
    N model calls, N − 1 noise draws when η ≠ 0 (none when η = 0).
    """
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"sample_dpmpp_2m_sde: solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}.")
    return _multistep_sde_run(run, x, sigmas, noise, order=2, solver_type=solver_type)


@k_sampler("DPM++ 3M SDE")
def sample_dpmpp_3m_sde(
    run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseOptions = ANCESTRAL_NOISE
) -> torch.Tensor:
    """DPM++ 3M SDE: the first-order SDE step plus the quadratic extrapolation of x̂_0 through the two previous
    steps' values, integrated against the step's kernel (weights ψ(ĥ) and ψ(ĥ)/ĥ − ½).

    Order 1, 2, then 3; the step to σ = 0 returns x̂_0. ``x``: ``(B, ...)``; ``sigmas``: ``(N + 1,)``; N model
    calls, N − 1 noise draws when η ≠ 0.
    """
    return _multistep_sde_run(run, x, sigmas, noise, order=3, solver_type="heun")
