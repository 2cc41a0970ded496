"""Ancestral samplers: Euler a, DPM2 a and DPM++ 2S a (k-diffusion's ``sample_*_ancestral``).

Each step σ_i → σ_{i+1} splits into a deterministic move of the probability-flow ODE down to σ_down and fresh noise
of standard deviation σ_up (:func:`~.noise.get_ancestral_step`, σ_down² + σ_up² = σ_{i+1}²):

    z_{i+1} = Φ(z_i, σ_i → σ_down) + S_noise σ_up ξ_i,   ξ_i = noise_sampler(σ_i, σ_{i+1}),

with Φ one Euler step (Karras et al. 2022), DPM2's geometric-midpoint step, or DPM-Solver++(2S) (Lu et al. 2022)
in λ = −log σ. The noise is drawn, and with η = 0 multiplied by 0, on every step that does not end at σ = 0
(DPM2 a: every step whose σ_down > 0), so a recorded sequence replays a run whatever η is.
"""

from __future__ import annotations

import torch

from ldm.models.diffusion.k_samplers.common import SamplerRun, k_sampler
from ldm.models.diffusion.k_samplers.noise import (
    ANCESTRAL_NOISE,
    NoiseOptions,
    default_noise_sampler,
    get_ancestral_step,
)
from ldm.models.diffusion.k_samplers.ode import Move, dpm2_move, dpmpp_first_order, euler_move

__all__ = ["sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral", "sample_euler_ancestral"]


def _dpmpp_2s_move(
    run: SamplerRun, z: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, denoised: torch.Tensor
) -> torch.Tensor:
    """DPM-Solver++(2S), r = ½: with h = λ_down − λ (λ = −log σ) and s = λ + h/2 (σ_s = √(σ σ_down)),

    u = (σ_s/σ) z + (1 − e^{−h/2}) x̂_0,   z' = (σ_down/σ) z + (1 − e^{−h}) D(u, σ_s).
    """
    if target == 0:
        return euler_move(run, z, sigma, target, denoised)
    lam, lam_down = -sigma.log(), -torch.as_tensor(target).log()
    sigma_s = (-torch.lerp(lam, lam_down, 0.5)).exp()
    probe = dpmpp_first_order(z, sigma, sigma_s, denoised)
    return dpmpp_first_order(z, sigma, target, run.denoise(probe, sigma_s))


def _ancestral_run(
    move: Move, run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseOptions, descent_only: bool = False
) -> torch.Tensor:
    """The loop every ancestral sampler shares: D(z, σ_i), callback, ``move`` to σ_down, then S_noise σ_up ξ.

    ``descent_only`` draws the noise only when σ_down > 0 (DPM2 a) instead of when σ_{i+1} > 0.
    """
    noise_sampler = default_noise_sampler(x) if noise.noise_sampler is None else noise.noise_sampler
    for i in run.steps(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=noise.eta)
        run.report(x, i, sigma, sigma, denoised)
        x = move(run, x, sigma, sigma_down, denoised)
        if (sigma_down if descent_only else sigma_next) > 0:
            x = x + noise_sampler(sigma, sigma_next) * noise.s_noise * sigma_up
    return x


@k_sampler("Euler a")
def sample_euler_ancestral(
    run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseOptions = ANCESTRAL_NOISE
) -> torch.Tensor:
    """Euler a: z_{i+1} = z_i + (σ_down − σ_i)(z_i − D(z_i, σ_i))/σ_i + S_noise σ_up ξ_i.

    ``x``: z at σ_0 ``(B, ...)``; ``sigmas``: ``(N + 1,)`` decreasing to 0. N model calls, N − 1 noise draws
    (none on the step to σ = 0). ``noise_sampler(σ_i, σ_{i+1})`` defaults to ``torch.randn_like`` draws.
    """
    return _ancestral_run(euler_move, run, x, sigmas, noise)


@k_sampler("DPM2 a")
def sample_dpm_2_ancestral(
    run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseOptions = ANCESTRAL_NOISE
) -> torch.Tensor:
    """DPM2 a: DPM2's midpoint step to σ_down (slope at σ_m = √(σ_i σ_down)) plus S_noise σ_up ξ_i.

    When σ_down = 0 (the last step, or η large enough that σ_up = σ_{i+1}) the move is one Euler step and no noise
    is drawn. ``x``: ``(B, ...)``; ``sigmas``: ``(N + 1,)``; 2N − 1 model calls for η ≤ 1.
    """
    return _ancestral_run(dpm2_move, run, x, sigmas, noise, descent_only=True)


@k_sampler("DPM++ 2S a")
def sample_dpmpp_2s_ancestral(
    run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseOptions = ANCESTRAL_NOISE
) -> torch.Tensor:
    """DPM++ 2S a: DPM-Solver++(2S) (Lu et al. 2022, r = ½, in λ = −log σ) to σ_down plus S_noise σ_up ξ_i.

    A step with σ_down = 0 is one Euler step. ``x``: ``(B, ...)``; ``sigmas``: ``(N + 1,)``; 2N − 1 model calls.
    """
    return _ancestral_run(_dpmpp_2s_move, run, x, sigmas, noise)
