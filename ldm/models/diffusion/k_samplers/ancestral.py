"""Ancestral samplers: Euler a, DPM2 a and DPM++ 2S a (k-diffusion's ``sample_*_ancestral``).

Each step σ_i → σ_{i+1} splits into a deterministic move of the probability-flow ODE down to σ_down and fresh noise
of standard deviation σ_up (:func:`~.noise.get_ancestral_step`, σ_down² + σ_up² = σ_{i+1}²):

    z_{i+1} = Φ(z_i, σ_i → σ_down) + S_noise σ_up ξ_i,   ξ_i = noise_sampler(σ_i, σ_{i+1}),

with Φ one Euler step (Karras et al. 2022), DPM2's geometric-midpoint step, or DPM-Solver++(2S) (Lu et al. 2022)
in λ = −log σ. The noise is drawn, and with η = 0 multiplied by 0, on every step that does not end at σ = 0
(DPM2 a: every step whose σ_down > 0), so a recorded sequence replays a run whatever η is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ldm.models.diffusion.k_samplers.common import Denoiser, StepCallback, extra_arguments, ode_derivative, report_step
from ldm.models.diffusion.k_samplers.noise import NoiseSampler, default_noise_sampler, get_ancestral_step
from ldm.models.diffusion.k_samplers.ode import call_denoiser, dpmpp_first_order
from ldm.models.diffusion.sampler_core import checked_function_keywords, progress

__all__ = ["sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral", "sample_euler_ancestral"]

#: ``move(model, z, σ, σ_down, x̂_0, extra_args) -> z at σ_down``: the deterministic part of an ancestral step.
Move = Callable[[Denoiser, torch.Tensor, torch.Tensor, Any, torch.Tensor, dict[str, Any]], torch.Tensor]


def _euler_move(
    model: Denoiser, z: torch.Tensor, sigma: torch.Tensor, target: Any, denoised: torch.Tensor, extra: dict[str, Any]
) -> torch.Tensor:
    """One Euler step of dz/dσ = (z − x̂_0)/σ from σ to ``target``."""
    return z + ode_derivative(z, sigma, denoised) * (target - sigma)


def _dpm2_move(
    model: Denoiser, z: torch.Tensor, sigma: torch.Tensor, target: Any, denoised: torch.Tensor, extra: dict[str, Any]
) -> torch.Tensor:
    """DPM2: the slope at the geometric midpoint σ_m = √(σ σ_down), reached by Euler, carries z to σ_down."""
    if target == 0:
        return _euler_move(model, z, sigma, target, denoised, extra)
    sigma_mid = torch.lerp(sigma.log(), torch.as_tensor(target).log(), 0.5).exp()
    halfway = z + ode_derivative(z, sigma, denoised) * (sigma_mid - sigma)
    mid_slope = ode_derivative(halfway, sigma_mid, call_denoiser(model, halfway, sigma_mid, extra))
    return z + mid_slope * (target - sigma)


def _dpmpp_2s_move(
    model: Denoiser, z: torch.Tensor, sigma: torch.Tensor, target: Any, denoised: torch.Tensor, extra: dict[str, Any]
) -> torch.Tensor:
    """DPM-Solver++(2S), r = ½: with h = λ_down − λ (λ = −log σ) and s = λ + h/2 (σ_s = √(σ σ_down)),

    u = (σ_s/σ) z + (1 − e^{−h/2}) x̂_0,   z' = (σ_down/σ) z + (1 − e^{−h}) D(u, σ_s).
    """
    if target == 0:
        return _euler_move(model, z, sigma, target, denoised, extra)
    lam, lam_down = -sigma.log(), -torch.as_tensor(target).log()
    sigma_s = (-torch.lerp(lam, lam_down, 0.5)).exp()
    probe = dpmpp_first_order(z, sigma, sigma_s, denoised)
    return dpmpp_first_order(z, sigma, target, call_denoiser(model, probe, sigma_s, extra))


def _ancestral_run(
    move: Move,
    label: str,
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: tuple[dict[str, Any] | None, StepCallback | None, bool | None],
    noise: tuple[float, float, NoiseSampler | None],
    noise_needs_descent: bool = False,
) -> torch.Tensor:
    """The loop every ancestral sampler shares: D(z, σ_i), callback, ``move`` to σ_down, then S_noise σ_up ξ.

    ``noise_needs_descent`` draws the noise only when σ_down > 0 (DPM2 a) instead of when σ_{i+1} > 0.
    """
    extra_args, callback, disable = options
    eta, s_noise, noise_sampler = noise
    extra_args = extra_arguments(extra_args)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    steps = len(sigmas) - 1
    for i in progress(range(steps), label, steps, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = call_denoiser(model, x, sigma, extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        report_step(callback, x, i, sigma, sigma, denoised)
        x = move(model, x, sigma, sigma_down, denoised, extra_args)
        if (sigma_down if noise_needs_descent else sigma_next) > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
    return x


@checked_function_keywords
@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Euler a: z_{i+1} = z_i + (σ_down − σ_i)(z_i − D(z_i, σ_i))/σ_i + S_noise σ_up ξ_i.

    ``x``: z at σ_0 ``(B, ...)``; ``sigmas``: ``(N + 1,)`` decreasing to 0. N model calls, N − 1 noise draws
    (none on the step to σ = 0). ``noise_sampler(σ_i, σ_{i+1})`` defaults to ``torch.randn_like`` draws.
    """
    return _ancestral_run(
        _euler_move, "Euler a", model, x, sigmas, (extra_args, callback, disable), (eta, s_noise, noise_sampler)
    )


@checked_function_keywords
@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM2 a: DPM2's midpoint step to σ_down (slope at σ_m = √(σ_i σ_down)) plus S_noise σ_up ξ_i.

    When σ_down = 0 (the last step, or η large enough that σ_up = σ_{i+1}) the move is one Euler step and no noise
    is drawn. ``x``: ``(B, ...)``; ``sigmas``: ``(N + 1,)``; 2N − 1 model calls for η ≤ 1.
    """
    return _ancestral_run(
        _dpm2_move,
        "DPM2 a",
        model,
        x,
        sigmas,
        (extra_args, callback, disable),
        (eta, s_noise, noise_sampler),
        noise_needs_descent=True,
    )


@checked_function_keywords
@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM++ 2S a: DPM-Solver++(2S) (Lu et al. 2022, r = ½, in λ = −log σ) to σ_down plus S_noise σ_up ξ_i.

    A step with σ_down = 0 is one Euler step. ``x``: ``(B, ...)``; ``sigmas``: ``(N + 1,)``; 2N − 1 model calls.
    """
    return _ancestral_run(
        _dpmpp_2s_move, "DPM++ 2S a", model, x, sigmas, (extra_args, callback, disable), (eta, s_noise, noise_sampler)
    )
