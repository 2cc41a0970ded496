"""``sample_unipc``: UniPC with k-diffusion's sampler signature, for any decreasing list of noise levels."""

from __future__ import annotations

import torch

from ldm.models.diffusion.k_samplers.common import SamplerRun, k_sampler
from ldm.models.diffusion.uni_pc.solver import sample_unipc_multistep


@k_sampler("UniPC")
def sample_unipc(
    run: SamplerRun,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    order: int = 2,
    variant: str = "bh2",
    lower_order_final: bool = True,
) -> torch.Tensor:
    """UniPC (Zhao et al. 2023) in the variance-exploding view z = x_0 + σ ε: α_i = 1, σ_i = ``sigmas[i]``,
    λ_i = −log σ_i in :func:`~ldm.models.diffusion.uni_pc.solver.sample_unipc_multistep`.

    ``model(z, sigma, **extra_args)`` is a denoiser returning x̂_0 ``(B, ...)`` for z ``(B, ...)`` and sigma
    ``(B,)``; ``x`` is z at ``sigmas[0]``; ``sigmas`` ``(n + 1,)`` decreases and may end in 0 (that step is
    x = x̂_0). n steps cost n model calls. ``callback`` gets k-diffusion's record for each step i: ``x`` the state
    at σ_i, ``denoised`` the model's x̂_0 at σ_i (evaluated at the predictor's point, before the corrector
    moved the state). Returns z at ``sigmas[-1]``.
    """
    levels = sigmas.detach().to("cpu", torch.float64)
    state_before = [x]

    def predict(z: torch.Tensor, i: int) -> torch.Tensor:
        return run.denoise(z, sigmas[i])

    def on_step(i: int, z_next: torch.Tensor, denoised: torch.Tensor) -> None:
        run.report(state_before[0], i, sigmas[i], sigmas[i], denoised)
        state_before[0] = z_next

    return sample_unipc_multistep(
        predict, x, torch.ones_like(levels), levels, order=order, variant=variant,
        lower_order_final=lower_order_final, callback=on_step, disable=run.disable,
    )  # fmt: skip
