"""DPM-Solver++(2M): the multistep second-order solver of the diffusion ODE in data-prediction form.

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models". With α, σ, λ
of :class:`~ldm.models.diffusion.schedule.DiscreteSchedule` (eqs. 1–2 there), a step from τ_i to τ_{i+1} with
h_i = λ_{i+1} − λ_i and the data prediction x̂_0(x, τ) is

(1) x_{i+1} = (σ_{i+1} / σ_i) x_i − α_{i+1} (e^{−h_i} − 1) D_i,
(2) D_i = x̂_0,i                                    (first step: DPM-Solver-1, which is DDIM),
(3) D_i = x̂_0,i + (x̂_0,i − x̂_0,i−1) / (2 r_i),  r_i = h_{i−1} / h_i   (afterwards).

S steps cost S model calls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ldm.models.diffusion.sampler_core import progress
from ldm.models.diffusion.schedule import DiscreteSchedule

#: ``denoise(x, τ) -> x̂_0`` for a batch ``x`` ``(B, ...)`` at the model time ``τ`` (a float).
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
#: ``callback(i, x, x̂_0)`` after step ``i``.
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]

SKIP_TYPES = ("time_uniform", "logSNR")
#: With ``lower_order_final``, runs shorter than this end with a first-order step.
LOWER_ORDER_FINAL_BELOW = 15


def time_steps(schedule: DiscreteSchedule, steps: int, skip_type: str = "time_uniform") -> torch.Tensor:
    """S + 1 descending model times from N − 1 to 0, float64: uniform in τ (``time_uniform``) or in λ_τ
    (``logSNR``)."""
    if steps < 1:
        raise ValueError(f"DPM-Solver needs at least one step, got S={steps}.")
    first, last = float(schedule.num_timesteps - 1), 0.0
    if skip_type == "time_uniform":
        return torch.linspace(first, last, steps + 1, dtype=torch.float64)
    if skip_type == "logSNR":
        ends = float(schedule.lambda_(first)), float(schedule.lambda_(last))
        return schedule.timestep_from_lambda(torch.linspace(*ends, steps + 1, dtype=torch.float64))
    raise ValueError(f"skip_type {skip_type!r} is unknown; use one of {SKIP_TYPES}.")


def sample_dpmpp_2m(
    denoise: Denoiser,
    x: torch.Tensor,
    times: torch.Tensor,
    schedule: DiscreteSchedule,
    callback: StepCallback | None = None,
    disable: bool = False,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """Integrate the diffusion ODE from ``x`` ``(B, ...)`` at ``times[0]`` to ``times[-1]`` by eqs. (1)–(3).

    ``lower_order_final``: a run of fewer than :data:`LOWER_ORDER_FINAL_BELOW` steps takes eq. (2) for its last
    step too, which steadies very short runs.
    """
    alphas, sigmas, lambdas = schedule.alpha(times), schedule.sigma(times), schedule.lambda_(times)
    n_steps = len(times) - 1
    first_order_last = lower_order_final and n_steps < LOWER_ORDER_FINAL_BELOW
    previous = None
    for i in progress(range(n_steps), "DPM-Solver++ Sampler", n_steps, disable):
        current = denoise(x, float(times[i]))
        h = lambdas[i + 1] - lambdas[i]
        data = current
        if previous is not None and not (first_order_last and i == n_steps - 1):
            ratio = (lambdas[i] - lambdas[i - 1]) / h
            data = current + (current - previous) / (2.0 * ratio)
        x = float(sigmas[i + 1] / sigmas[i]) * x - float(alphas[i + 1] * torch.expm1(-h)) * data
        previous = current
        if callback is not None:
            callback(i, x, current)
    return x
