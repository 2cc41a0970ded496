"""One step of DPM-Solver / DPM-Solver++: the exponential integrator of the diffusion ODE with Taylor terms.

Lu et al. 2022a ("DPM-Solver", eqs. 3.4, 3.7) and 2022b ("DPM-Solver++", eq. 9). With α, σ, λ of a VP schedule
(``vp_schedules``) and h = λ_t − λ_s, the exact solution of the ODE from time s to time t is

(1) x_t = (α_t/α_s) x_s − α_t ∫_{λ_s}^{λ_t} e^{−λ} ε̂(x_λ, λ) dλ     (noise form: DPM-Solver),
(2) x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x̂_0(x_λ, λ) dλ      (data form: DPM-Solver++).

Writing the prediction m(λ) (ε̂ or x̂_0) as its Taylor series at λ_s and integrating each power exactly,

(3) x_t = a·x_s + b·Σ_k w_k(h)·D_k,   D_k = h^k m^{(k)}(λ_s),

where a = α_t/α_s, b = −σ_t, g = +1 (noise form) or a = σ_t/σ_s, b = α_t, g = −1 (data form), and

(4) w_k(h) = h^{−k} ∫_0^h e^{g u} (h − u)^k / k! du = g^{−(k+1)} h^{−k} (e^{g h} − Σ_{j≤k} (g h)^j / j!).

Keeping D_0 only is DPM-Solver-1 (= DDIM). Higher orders estimate D_1, D_2 from model values at other λ
(:func:`taylor_terms`). Every tensor of times or coefficients is ``(B,)``; states and predictions are ``(B, ...)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ldm.models.diffusion.dpm_solver.vp_schedules import lambda_from_log_alpha, sigma_from_log_alpha

#: How a second-order step weighs the slope D_1: by w_1 ("taylor", eq. 4) or by w_0/2 ("dpm_solver", the
#: DPM-Solver papers' choice; the same up to O(h²), so either is second order).
SOLVER_TYPES = ("dpm_solver", "taylor")


def expand_dims(v: torch.Tensor, dims: int) -> torch.Tensor:
    """``v`` of shape ``(N,)`` as ``(N, 1, ..., 1)`` with ``dims`` dimensions in all, to broadcast against a batch."""
    return v.reshape(*v.shape, *([1] * (dims - 1)))


def check_solver_type(solver_type: str) -> None:
    """Raise ``ValueError`` unless ``solver_type`` is one of :data:`SOLVER_TYPES`."""
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}.")


def taylor_weights(h: torch.Tensor, count: int, sign: float) -> list[torch.Tensor]:
    """Eq. (4): w_0(h)..w_{count−1}(h) for g = ``sign`` (+1 noise form, −1 data form), each shaped like ``h``."""
    gh = sign * h
    remainder = torch.expm1(gh)
    power = torch.ones_like(gh)
    weights = []
    for k in range(count):
        if k:
            power = power * gh / k
            remainder = remainder - power
        weights.append(remainder / (sign ** (k + 1) * h**k))
    return weights


def taylor_terms(offsets: Sequence[Any], values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """D_0..D_{n−1} of eq. (3) from n model values: the derivatives at ρ = 0 of the polynomial of degree n − 1
    through the points (ρ_j, m_j), where ρ_j = (λ_j − λ_s)/h (``offsets``; ρ_0 = 0; floats or ``(B,)``) and m_j
    = ``values[j]`` ``(B, ...)``. Newton's divided differences, then the Newton basis expanded in powers of ρ.
    """
    dims = values[0].dim()
    nodes = [expand_dims(torch.as_tensor(r, dtype=values[0].dtype, device=values[0].device), dims) for r in offsets]
    column, newton = list(values), [values[0]]
    for level in range(1, len(values)):
        column = [(column[j + 1] - column[j]) / (nodes[j + level] - nodes[j]) for j in range(len(column) - 1)]
        newton.append(column[0])
    coefficients: list[Any] = [0.0] * len(values)
    basis: list[Any] = [1.0]  # Π_{i<j} (ρ − ρ_i) in powers of ρ, lowest first
    for j, divided in enumerate(newton):
        for k, c in enumerate(basis):
            coefficients[k] = coefficients[k] + divided * c
        basis = [0.0, *basis]
        for k in range(len(basis) - 1):
            basis[k] = basis[k] - nodes[j] * basis[k + 1]
    return [math.factorial(k) * c for k, c in enumerate(coefficients)]


@dataclass(frozen=True)
class ExponentialStep:
    """Eq. (3) for one step s → t: ``decay`` = a, ``gain`` = b, ``h``, ``lambda_s``, and g = ``sign``."""

    decay: torch.Tensor
    gain: torch.Tensor
    h: torch.Tensor
    lambda_s: torch.Tensor
    sign: float

    def weights(self, count: int) -> list[torch.Tensor]:
        """w_0(h)..w_{count−1}(h) of eq. (4)."""
        return taylor_weights(self.h, count, self.sign)

    def slope_weight(self, solver_type: str) -> torch.Tensor:
        """The weight of D_1 in a second-order step (see :data:`SOLVER_TYPES`)."""
        check_solver_type(solver_type)
        return self.weights(2)[1] if solver_type == "taylor" else 0.5 * self.weights(1)[0]

    def offset(self, lambda_: torch.Tensor) -> torch.Tensor:
        """ρ = (λ − λ_s)/h, the place of another time in units of this step."""
        return (lambda_ - self.lambda_s) / self.h

    def advance(self, x: torch.Tensor, terms: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """a·x + b·Σ w·D over ``terms`` = [(w, D), ...] (eq. 3)."""
        out = expand_dims(self.decay, x.dim()) * x
        for weight, value in terms:
            out = out + expand_dims(self.gain * weight, x.dim()) * value
        return out


def exponential_step(noise_schedule: Any, s: torch.Tensor, t: torch.Tensor, data_prediction: bool) -> ExponentialStep:
    """The coefficients of eq. (3) from time ``s`` to time ``t`` ``(B,)`` of ``noise_schedule`` (its
    ``marginal_log_mean_coeff``), in the data form when ``data_prediction`` else in the noise form."""
    log_alpha_s, log_alpha_t = noise_schedule.marginal_log_mean_coeff(s), noise_schedule.marginal_log_mean_coeff(t)
    lambda_s = lambda_from_log_alpha(log_alpha_s)
    h = lambda_from_log_alpha(log_alpha_t) - lambda_s
    if data_prediction:
        decay = sigma_from_log_alpha(log_alpha_t) / sigma_from_log_alpha(log_alpha_s)
        return ExponentialStep(decay, torch.exp(log_alpha_t), h, lambda_s, -1.0)
    decay = torch.exp(log_alpha_t - log_alpha_s)
    return ExponentialStep(decay, -sigma_from_log_alpha(log_alpha_t), h, lambda_s, 1.0)
