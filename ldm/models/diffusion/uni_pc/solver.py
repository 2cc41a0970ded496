"""UniPC: the multistep unified predictor–corrector solver of the diffusion ODE in data-prediction form.

Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models". The
solver walks a grid of noise levels i = 0..n with x_i = α_i x_0 + σ_i ε and λ_i = log α_i − log σ_i (the last
level may be σ_n = 0, λ_n = +∞). m_i = x̂_0(x̃_i, i) is the data prediction at the point x̃_i the predictor
reached (x̃_0 = x_0, the start). A step from i to i + 1 of order p, with h = λ_{i+1} − λ_i and z = −h, is

(1) x̄ = (σ_{i+1} / σ_i) x_i + α_{i+1} (1 − e^{−h}) m_i                      (DPM-Solver-1, i.e. DDIM),
(2) r_k = (λ_{i−k} − λ_i) / h,  D_k = (m_{i−k} − m_i) / r_k,                  k = 1..p−1 (earlier points),
(3) UniP-p:  x̃_{i+1} = x̄ − α_{i+1} B(z) Σ_{k<p} ρ^P_k D_k,
(4) UniC-p:  x_{i+1} = x̄ − α_{i+1} B(z) (Σ_{k<p} ρ^C_k D_k + ρ^C_p D_p),  D_p = m_{i+1} − m_i (r_p = 1),
(5) ρ solves  Σ_k ρ_k r_k^{j−1} = j! z φ_{j+1}(z) / B(z),  j = 1..(number of ρ),  with
    φ_0(z) = e^z, φ_{j+1}(z) = (φ_j(z) − 1/j!) / z, and B(z) = z (``bh1``) or e^z − 1 (``bh2``).

(3)–(5) make the update match the Taylor expansion of x̂_0 in λ to order p (predictor) and p + 1 (corrector);
as the authors do, UniP-2 and UniC-1 take ρ = ½ (the h → 0 limit of (5)) instead of solving. The corrector of a
step reuses m_{i+1}, which is kept as the history value of the next step, so n steps cost n model calls: the
last step is a predictor only. Orders rise 1, 2, ... over the first steps (too few earlier points) and, with
``lower_order_final``, fall back to 1 over the last ones; a step to σ = 0 is always first order (x = m_i).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

import torch

from ldm.models.diffusion.sampler_core import progress

#: ``data_prediction(x, i) -> x̂_0`` for a batch ``x`` ``(B, ...)`` at grid point ``i``.
DataPrediction = Callable[[torch.Tensor, int], torch.Tensor]
#: ``callback(i, x_{i+1}, m_i)`` after step ``i``: the new state and the data prediction the step started from.
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]

#: B(z) of eq. (5): ``bh1`` is B(z) = z, ``bh2`` is B(z) = e^z − 1.
VARIANTS = ("bh1", "bh2")
MAX_ORDER = 3


def check_settings(order: int, variant: str) -> None:
    """``ValueError`` unless ``order`` is 1..:data:`MAX_ORDER` and ``variant`` one of :data:`VARIANTS`."""
    if not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        raise ValueError(f"UniPC order must be an integer from 1 to {MAX_ORDER}, got {order!r}.")
    if variant not in VARIANTS:
        raise ValueError(f"UniPC variant {variant!r} is unknown; use 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1).")


def step_orders(steps: int, order: int, lower_order_final: bool, ends_at_zero: bool) -> list[int]:
    """The order p of each of ``steps`` steps: min(order, i + 1) for step i (the history it has), also at most
    ``steps − i`` with ``lower_order_final``, and 1 for a final step to σ = 0."""
    orders = []
    for i in range(steps):
        p = min(order, i + 1)
        if lower_order_final:
            p = min(p, steps - i)
        orders.append(p)
    if ends_at_zero and orders:
        orders[-1] = 1
    return orders


def b_of_h(z: float, variant: str) -> float:
    """B(z) of eq. (5)."""
    return z if variant == "bh1" else math.expm1(z)


def taylor_targets(z: float, count: int) -> list[float]:
    """j! z φ_{j+1}(z) for j = 1..``count`` (the right-hand sides of eq. 5 before dividing by B)."""
    targets = []
    phi = math.expm1(z) / z  # φ_1
    factorial = 1.0  # j!
    for j in range(1, count + 1):
        phi = (phi - 1.0 / factorial) / z  # φ_{j+1} from φ_j
        targets.append(factorial * z * phi)
        factorial *= j + 1
    return targets


def solve_weights(ratios: Sequence[float], z: float, variant: str) -> list[float]:
    """ρ_1..ρ_K of eq. (5) for the ratios r_1..r_K: the Vandermonde system R ρ = g / B(z), R_jk = r_k^{j−1}."""
    count = len(ratios)
    if count == 1:
        return [0.5]
    nodes = torch.tensor(list(ratios), dtype=torch.float64)
    vandermonde = nodes.unsqueeze(0) ** torch.arange(count, dtype=torch.float64).unsqueeze(1)
    rhs = torch.tensor(taylor_targets(z, count), dtype=torch.float64) / b_of_h(z, variant)
    return torch.linalg.solve(vandermonde, rhs).tolist()


def weighted_differences(weights: Sequence[float], differences: Sequence[torch.Tensor]) -> torch.Tensor | float:
    """Σ_k w_k Δ_k over matching lists (0.0 when they are empty)."""
    total: torch.Tensor | float = 0.0
    for weight, difference in zip(weights, differences):
        total = total + weight * difference
    return total


def _grid_values(values: torch.Tensor | Sequence[float]) -> list[float]:
    return [float(v) for v in torch.as_tensor(values, dtype=torch.float64).flatten()]


def log_snr(alphas: Sequence[float], sigmas: Sequence[float]) -> list[float]:
    """λ_i = log α_i − log σ_i (+∞ where σ_i = 0)."""
    return [math.log(a) - math.log(s) if s > 0 else math.inf for a, s in zip(alphas, sigmas)]


def sample_unipc_multistep(
    data_prediction: DataPrediction,
    x: torch.Tensor,
    alphas: torch.Tensor | Sequence[float],
    sigmas: torch.Tensor | Sequence[float],
    order: int = 3,
    variant: str = "bh1",
    lower_order_final: bool = True,
    disable_corrector: Collection[int] = (),
    callback: StepCallback | None = None,
    disable: bool | None = False,
    desc: str = "UniPC Sampler",
) -> torch.Tensor:
    """Integrate the diffusion ODE from ``x`` ``(B, ...)`` at grid point 0 to grid point n by eqs. (1)–(5).

    ``alphas``, ``sigmas``: α_0..α_n and σ_0..σ_n (n + 1 values; only σ_n may be 0). ``data_prediction(x, i)``
    is called at grid points 0..n−1 (n calls). ``disable_corrector``: steps i whose result skips eq. (4) (the
    predictor's x̃_{i+1} goes on). Returns x_n, shaped like ``x``.
    """
    check_settings(order, variant)
    alpha, sigma = _grid_values(alphas), _grid_values(sigmas)
    if len(alpha) != len(sigma) or len(sigma) < 2:
        raise ValueError(f"UniPC needs matching α and σ grids of at least 2 points, got {len(alpha)} and {len(sigma)}.")
    if any(s <= 0 for s in sigma[:-1]):
        raise ValueError("only the last noise level of a UniPC grid may be 0; drop the earlier zeros from sigmas.")
    lambdas = log_snr(alpha, sigma)
    steps = len(sigma) - 1
    orders = step_orders(steps, order, lower_order_final, ends_at_zero=sigma[-1] == 0)
    history = [(lambdas[0], data_prediction(x, 0))]  # (λ_k, m_k) of the latest points, newest last
    for i in progress(range(steps), desc, steps, disable):
        lambda_i, m_i = history[-1]
        h = lambdas[i + 1] - lambda_i
        earlier = history[-orders[i] : -1][::-1]  # k = 1..p−1, nearest first
        ratios = [(lambda_k - lambda_i) / h for lambda_k, _ in earlier]
        differences = [(m_k - m_i) / r for (_, m_k), r in zip(earlier, ratios)]
        base = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * math.expm1(-h) * m_i
        x = base - _b_term(alpha[i + 1], -h, variant, ratios, differences) if ratios else base
        if i < steps - 1:
            m_next = data_prediction(x, i + 1)
            if i not in disable_corrector:
                x = base - _b_term(alpha[i + 1], -h, variant, [*ratios, 1.0], [*differences, m_next - m_i])
            history.append((lambdas[i + 1], m_next))
            del history[:-order]
        if callback is not None:
            callback(i, x, m_i)
    return x


def _b_term(
    alpha_next: float, z: float, variant: str, ratios: list[float], differences: list[torch.Tensor]
) -> torch.Tensor | float:
    """α_{i+1} B(z) Σ_k ρ_k D_k of eqs. (3)–(4), the ρ from eq. (5) for ``ratios``."""
    weights = solve_weights(ratios, z, variant)
    return alpha_next * b_of_h(z, variant) * weighted_differences(weights, differences)
