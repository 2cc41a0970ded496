"""Where DPM-Solver steps and with which order: time grids, the singlestep order plan, the multistep warm-up.

Time grids run from t_T down to t_0 in N intervals (Lu et al. 2022a, §3.3 and appendix):

- ``"time_uniform"``: t_i uniform (recommended for high-resolution images);
- ``"logSNR"``: λ_{t_i} uniform (recommended for low-resolution images);
- ``"time_quadratic"``: √t_i uniform (DDIM's choice for small images).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic")
ORDERS = (1, 2, 3)
#: With ``lower_order_final``, multistep runs shorter than this lower the order of their last steps.
LOWER_ORDER_FINAL_BELOW = 15


def check_order(order: int) -> None:
    """Raise ``ValueError`` unless ``order`` is 1, 2 or 3."""
    if order not in ORDERS:
        raise ValueError(f"the DPM-Solver order must be 1, 2 or 3, got {order!r}.")


def time_grid(noise_schedule: Any, skip_type: str, t_T: float, t_0: float, intervals: int) -> torch.Tensor:
    """``intervals`` + 1 times from ``t_T`` to ``t_0`` spaced as ``skip_type`` says, float64 on the CPU."""
    if intervals < 1:
        raise ValueError(f"a time grid needs at least one interval, got N={intervals}.")
    ends = torch.tensor([float(t_T), float(t_0)], dtype=torch.float64)
    if skip_type == "time_uniform":
        return torch.linspace(float(ends[0]), float(ends[1]), intervals + 1, dtype=torch.float64)
    if skip_type == "time_quadratic":
        roots = ends.sqrt()
        return torch.linspace(float(roots[0]), float(roots[1]), intervals + 1, dtype=torch.float64).square()
    if skip_type == "logSNR":
        lambda_T, lambda_0 = noise_schedule.marginal_lambda(ends).tolist()
        return noise_schedule.inverse_lambda(torch.linspace(lambda_T, lambda_0, intervals + 1, dtype=torch.float64))
    raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}.")


def singlestep_orders(steps: int, order: int) -> list[int]:
    """The orders of "DPM-Solver-fast" (Lu et al. 2022a, §3.3) for ``steps`` model calls in all: steps of
    ``order`` and one or two lower-order steps at the end to use the remaining calls, e.g. 3·q + 1 calls with
    order 3 give [3] * q + [1] and 3·q calls give [3] * (q − 1) + [2, 1]."""
    check_order(order)
    if steps < 1:
        raise ValueError(f"DPM-Solver needs at least one step, got steps={steps}.")
    full, rest = divmod(steps, order)
    if order == 3 and rest == 0:
        return [3] * (full - 1) + [2, 1]
    return [order] * full + ([rest] if rest else [])


def outer_indices(orders: list[int]) -> list[int]:
    """The fine-grid index at which each singlestep interval starts and the last one ends: the running sums
    of ``orders`` from 0."""
    return [0, *itertools.accumulate(orders)]


def multistep_orders(steps: int, order: int, lower_order_final: bool) -> list[int]:
    """The order of each of ``steps`` multistep updates: step i (from 1) uses min(order, i) past values, and with
    ``lower_order_final`` on a run shorter than :data:`LOWER_ORDER_FINAL_BELOW` steps, at most steps − i + 1."""
    check_order(order)
    if steps < 1:
        raise ValueError(f"DPM-Solver needs at least one step, got steps={steps}.")
    shorten = lower_order_final and steps < LOWER_ORDER_FINAL_BELOW
    return [min(order, i, steps - i + 1) if shorten else min(order, i) for i in range(1, steps + 1)]
