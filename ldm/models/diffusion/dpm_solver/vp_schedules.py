"""Variance-preserving noise schedules in continuous time t ∈ (0, T], as DPM-Solver reads them.

A VP schedule is one decreasing curve log α_t; everything else follows from it (Lu et al. 2022, §2):

(1) σ_t = √(1 − α_t²),
(2) λ_t = log α_t − log σ_t  (half the log signal-to-noise ratio),
(3) log α = −½ log(1 + e^{−2λ})  (the inverse of (2) for log α).

Three curves, each with log α(t) and its inverse:

- :class:`DiscreteCurve`: a trained discrete model's ᾱ_0..ᾱ_{N−1} placed at t_n = (n + 1)/N, read through
  :class:`~ldm.models.diffusion.schedule.DiscreteSchedule` (log ᾱ linear between the steps);
- :class:`LinearCurve`: the VP-SDE of Song et al. 2021 with β(t) = β_0 + t (β_1 − β_0), so
  log α_t = −½ ∫_0^t β = −¼ t² (β_1 − β_0) − ½ t β_0;
- :class:`CosineCurve`: the cosine schedule of Nichol & Dhariwal 2021, ᾱ(t) = f(t)/f(0) with
  f(t) = cos²((t + s)/(1 + s) · π/2), s = 0.008.
"""

from __future__ import annotations

import math

import torch

from ldm.models.diffusion.schedule import DiscreteSchedule

COSINE_OFFSET = 0.008
#: The cosine schedule ends before t = 1, where α_t → 0 makes λ_t unbounded (DPM-Solver's choice).
COSINE_END_TIME = 0.9946
#: The largest β of the cosine schedule, as improved DDPM clips it; kept for the ``cosine_t_max`` attribute.
COSINE_BETA_MAX = 999.0


def sigma_from_log_alpha(log_alpha: torch.Tensor) -> torch.Tensor:
    """Eq. (1): σ = √(1 − e^{2 log α}), elementwise."""
    return torch.sqrt(-torch.expm1(2.0 * log_alpha))


def lambda_from_log_alpha(log_alpha: torch.Tensor) -> torch.Tensor:
    """Eq. (2): λ = log α − ½ log(1 − α²), elementwise."""
    return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))


def log_alpha_from_lambda(lambda_: torch.Tensor) -> torch.Tensor:
    """Eq. (3): log α = −½ log(1 + e^{−2λ}), elementwise and stable for any λ."""
    return -0.5 * torch.nn.functional.softplus(-2.0 * lambda_)


def interpolate_fn(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """The piecewise-linear f through the keypoints (xp, yp) of each channel, at ``x``; beyond the first or last
    keypoint, the line through the two outermost ones (so f is defined everywhere and differentiable in x).

    ``x``: ``(N, C)``; ``xp``, ``yp``: ``(C, K)`` with K ≥ 2 and each row of ``xp`` ascending. Returns ``(N, C)``.
    """
    queries = x.transpose(0, 1).contiguous()  # (C, N)
    upper = torch.searchsorted(xp.contiguous(), queries).clamp(1, xp.shape[1] - 1)
    x_lo, x_hi = xp.gather(1, upper - 1), xp.gather(1, upper)
    y_lo, y_hi = yp.gather(1, upper - 1), yp.gather(1, upper)
    return (y_lo + (queries - x_lo) * (y_hi - y_lo) / (x_hi - x_lo)).transpose(0, 1)


class LinearCurve:
    """log α_t = −¼ t² (β_1 − β_0) − ½ t β_0 on t ∈ [0, 1] (β_0 = ``beta_0``, β_1 = ``beta_1``)."""

    end_time = 1.0

    def __init__(self, beta_0: float, beta_1: float) -> None:
        if beta_0 < 0 or beta_1 < beta_0 or beta_1 <= 0:
            raise ValueError(
                "the linear VP schedule needs 0 <= continuous_beta_0 <= continuous_beta_1 and continuous_beta_1 > 0, "
                f"got {beta_0} and {beta_1}."
            )
        self.beta_0, self.beta_1 = beta_0, beta_1

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log α_t, elementwise."""
        slope = self.beta_1 - self.beta_0
        return -t * (0.25 * slope * t + 0.5 * self.beta_0)

    def time_of_lambda(self, lambda_: torch.Tensor) -> torch.Tensor:
        """The root t ≥ 0 of ¼ Δβ t² + ½ β_0 t = −log α (Δβ = β_1 − β_0, log α from eq. 3), in the cancellation-free
        form t = 2u / (β_0 + √(β_0² + 2 Δβ u)) with u = −2 log α; t = u / β_0 when Δβ = 0."""
        u = -2.0 * log_alpha_from_lambda(lambda_)
        slope = self.beta_1 - self.beta_0
        return 2.0 * u / (self.beta_0 + torch.sqrt(self.beta_0**2 + 2.0 * slope * u))


class CosineCurve:
    """log α_t = log cos((t + s)/(1 + s) · π/2) − log cos(s/(1 + s) · π/2) on t ∈ [0, 0.9946], s = 0.008."""

    end_time = COSINE_END_TIME

    def __init__(self, offset: float = COSINE_OFFSET) -> None:
        self.offset = offset
        self.log_alpha_at_zero = math.log(math.cos(self._angle_scale * offset))
        #: the time at which improved DDPM's β would reach ``COSINE_BETA_MAX`` (an attribute of the original).
        self.t_max = math.atan(0.5 * COSINE_BETA_MAX / self._angle_scale) / self._angle_scale - offset

    @property
    def _angle_scale(self) -> float:
        return math.pi / (2.0 * (1.0 + self.offset))

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log α_t, elementwise."""
        return torch.log(torch.cos(self._angle_scale * (t + self.offset))) - self.log_alpha_at_zero

    def time_of_lambda(self, lambda_: torch.Tensor) -> torch.Tensor:
        """t = arccos(α_t · cos(s/(1 + s) · π/2)) · 2(1 + s)/π − s, with log α_t from eq. (3)."""
        shifted = log_alpha_from_lambda(lambda_) + self.log_alpha_at_zero
        return torch.arccos(torch.exp(shifted)) / self._angle_scale - self.offset


class DiscreteCurve:
    """A discrete model's schedule in continuous time: t_n = (n + 1)/N for the model step n = 0..N−1.

    log α_t = ½ log ᾱ at the model time τ = N t − 1, linear in τ between steps and held constant outside
    [1/N, 1] (:class:`~ldm.models.diffusion.schedule.DiscreteSchedule`, float64 on the CPU); the results come back
    in the dtype and on the device of ``t``.
    """

    end_time = 1.0

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self.schedule = DiscreteSchedule(alphas_cumprod)
        self.total_N = self.schedule.num_timesteps

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """τ = N t − 1, the model step of continuous time t (N t_n − 1 = n)."""
        return self.total_N * t - 1.0

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """½ log ᾱ_τ at τ = N t − 1."""
        tau = self.model_time(t.to("cpu", torch.float64))
        return self.schedule.log_alpha(tau).to(t.device, _float_dtype(t))

    def time_of_lambda(self, lambda_: torch.Tensor) -> torch.Tensor:
        """t = (τ + 1)/N with λ_τ = ``lambda_`` (clamped to the model's range)."""
        tau = self.schedule.timestep_from_lambda(lambda_.to("cpu", torch.float64))
        return ((tau + 1.0) / self.total_N).to(lambda_.device, _float_dtype(lambda_))


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    """``t``'s dtype when it is a floating type, else the default float dtype."""
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


SCHEDULES = ("discrete", "linear", "cosine")


def _alphas_cumprod_of(betas: torch.Tensor | None, alphas_cumprod: torch.Tensor | None) -> torch.Tensor:
    """ᾱ_n from ``betas`` (ᾱ_n = Π_{m≤n} (1 − β_m), summed in log space) or as given."""
    if betas is not None:
        return torch.exp(torch.cumsum(torch.log1p(-torch.as_tensor(betas, dtype=torch.float64)), dim=0))
    if alphas_cumprod is None:
        raise ValueError("NoiseScheduleVP('discrete') needs betas or alphas_cumprod (the model's buffers).")
    return torch.as_tensor(alphas_cumprod)


class NoiseScheduleVP:
    """The forward process q(x_t | x_0) = N(α_t x_0, σ_t² I) of a VP diffusion model in continuous time t ∈ (0, T].

    ``schedule``: ``"discrete"`` for a model trained on steps n = 0..N−1 (give ``betas`` or ``alphas_cumprod``;
    step n sits at t = (n + 1)/N, T = 1), ``"linear"`` for the VP-SDE with β(t) from ``continuous_beta_0`` to
    ``continuous_beta_1`` (T = 1), ``"cosine"`` for improved DDPM's schedule (T = 0.9946); both continuous ones
    have ``total_N`` = 1000. Every method maps a tensor of times (or of λ) elementwise, eqs. (1)–(3).
    """

    def __init__(
        self,
        schedule: str = "discrete",
        betas: torch.Tensor | None = None,
        alphas_cumprod: torch.Tensor | None = None,
        continuous_beta_0: float = 0.1,
        continuous_beta_1: float = 20.0,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"Unsupported noise schedule {schedule!r}; use one of {SCHEDULES}.")
        self.schedule = schedule
        if schedule == "discrete":
            curve = DiscreteCurve(_alphas_cumprod_of(betas, alphas_cumprod))
            self.total_N = curve.total_N
            #: the model steps' times and log α there, ``(1, N)`` each (the original's keypoint arrays).
            self.t_array = (torch.arange(1, self.total_N + 1, dtype=torch.float64) / self.total_N).float()[None]
            self.log_alpha_array = curve.log_alpha(self.t_array)
        else:
            cosine = CosineCurve()
            self.total_N = 1000
            self.beta_0, self.beta_1 = continuous_beta_0, continuous_beta_1
            self.cosine_s, self.cosine_beta_max = cosine.offset, COSINE_BETA_MAX
            self.cosine_t_max, self.cosine_log_alpha_0 = cosine.t_max, cosine.log_alpha_at_zero
            curve = LinearCurve(continuous_beta_0, continuous_beta_1) if schedule == "linear" else cosine
        self.curve = curve
        self.T = curve.end_time

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """log α_t."""
        return self.curve.log_alpha(torch.as_tensor(t))

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """α_t."""
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """Eq. (1): σ_t."""
        return sigma_from_log_alpha(self.marginal_log_mean_coeff(t))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        """Eq. (2): λ_t = log α_t − log σ_t."""
        return lambda_from_log_alpha(self.marginal_log_mean_coeff(t))

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        """The time t with λ_t = ``lamb``."""
        return self.curve.time_of_lambda(torch.as_tensor(lamb))
