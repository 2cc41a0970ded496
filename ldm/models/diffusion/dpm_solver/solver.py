"""DPM-Solver++(2M): the multistep second-order solver of the diffusion ODE in data-prediction form.

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models". With
α_t, σ_t the VP marginal coefficients (q(x_t | x_0) = N(α_t x_0, σ_t² I)) and λ_t = log α_t − log σ_t, one step
from s to t with h = λ_t − λ_s and the data prediction x̂_0 = (x_s − σ_s ε̂) / α_s is

    x_t = (σ_t / σ_s) x_s + α_t (1 − e^{−h}) D,

where D = x̂_0(s) for the first step (DPM-Solver-1, i.e. DDIM) and afterwards
D = x̂_0(s) + (x̂_0(s) − x̂_0(s_prev)) / (2 r), r = (λ_s − λ_{s_prev}) / h. S steps cost S model calls.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ldm.models.diffusion.sampling_common import progress

#: ``denoise(x, t) -> x̂_0`` for a batch ``x`` ``(B, ...)`` at the continuous time ``t`` (a float).
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
#: ``callback(i, x, x̂_0)`` after step ``i``.
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]

SKIP_TYPES = ("time_uniform", "logSNR")


class DiscreteVPSchedule:
    """The schedule of a model trained on steps n = 0..N−1, seen in continuous time t_n = (n + 1) / N ∈ [1/N, 1].

    α_{t_n} = √ᾱ_n, log α_t is piecewise linear in t between the grid points, σ_t = √(1 − α_t²),
    λ_t = log α_t − log σ_t. All arithmetic is float64 numpy on the step times (scalars, not tensors).
    """

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64).numpy()
        self.total_n = alphas_cumprod.shape[0]
        self.t_grid = np.arange(1, self.total_n + 1, dtype=np.float64) / self.total_n
        self.log_alpha_grid = 0.5 * np.log(alphas_cumprod)

    @property
    def t_start(self) -> float:
        return 1.0

    @property
    def t_end(self) -> float:
        return 1.0 / self.total_n

    def log_alpha(self, t: np.ndarray) -> np.ndarray:
        return np.interp(t, self.t_grid, self.log_alpha_grid)

    def sigma(self, t: np.ndarray) -> np.ndarray:
        return np.sqrt(-np.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t: np.ndarray) -> np.ndarray:
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * np.log(-np.expm1(2.0 * log_alpha))

    def inverse_lambda(self, lambda_t: np.ndarray) -> np.ndarray:
        """t with λ_t = ``lambda_t``: log α = −½ log(1 + e^{−2λ}), then t by the same piecewise-linear map."""
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lambda_t)
        return np.interp(log_alpha, self.log_alpha_grid[::-1], self.t_grid[::-1])

    def model_time(self, t: float) -> float:
        """The model's timestep input for time t: (t − 1/N) · 1000 (999 at t = 1 for N = 1000)."""
        return (t - 1.0 / self.total_n) * 1000.0


def time_steps(schedule: DiscreteVPSchedule, steps: int, skip_type: str = "time_uniform") -> np.ndarray:
    """S + 1 descending times from 1 to 1/N, uniform in t (``time_uniform``) or in λ_t (``logSNR``)."""
    if steps < 1:
        raise ValueError(f"DPM-Solver needs at least one step, got S={steps}.")
    t_start, t_end = schedule.t_start, schedule.t_end
    if skip_type == "time_uniform":
        return np.linspace(t_start, t_end, steps + 1)
    if skip_type == "logSNR":
        lambdas = np.linspace(schedule.lambda_(t_start), schedule.lambda_(t_end), steps + 1)
        return schedule.inverse_lambda(lambdas)
    raise ValueError(f"skip_type {skip_type!r} is unknown; use one of {SKIP_TYPES}.")


def sample_dpmpp_2m(
    denoise: Denoiser,
    x: torch.Tensor,
    times: np.ndarray,
    schedule: DiscreteVPSchedule,
    callback: StepCallback | None = None,
    disable: bool = False,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """Integrate the diffusion ODE from ``x`` ``(B, ...)`` at ``times[0]`` to ``times[-1]`` with DPM-Solver++(2M).

    ``lower_order_final`` (the original's setting): with fewer than 15 steps the last step is first order
    (D = x̂_0(s)), which stabilises very short runs.
    """
    alphas = np.exp(schedule.log_alpha(times))
    sigmas = schedule.sigma(times)
    lambdas = schedule.lambda_(times)
    steps = len(times) - 1
    x0_prev = None
    for i in progress(range(steps), "DPM-Solver++ Sampler", steps, disable):
        x0 = denoise(x, float(times[i]))
        h = lambdas[i + 1] - lambdas[i]
        if x0_prev is None or (lower_order_final and steps < 15 and i == steps - 1):
            d = x0
        else:
            r = (lambdas[i] - lambdas[i - 1]) / h
            d = x0 + (x0 - x0_prev) / (2.0 * r)
        x = float(sigmas[i + 1] / sigmas[i]) * x + float(-alphas[i + 1] * np.expm1(-h)) * d
        x0_prev = x0
        if callback is not None:
            callback(i, x, x0)
    return x
