"""The DPM-Solver authors' public API as Stable Diffusion ships it: ``NoiseScheduleVP``, ``model_wrapper``,
``DPM_Solver``, ``interpolate_fn``, ``expand_dims``.

Lu et al. 2022a, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps";
Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models".

    ns = NoiseScheduleVP("discrete", alphas_cumprod=model.alphas_cumprod)
    model_fn = model_wrapper(lambda x, t, c: model.apply_model(x, t, c), ns, model_type="noise",
                             guidance_type="classifier-free", condition=c, unconditional_condition=uc,
                             guidance_scale=7.5)
    x_0 = DPM_Solver(model_fn, ns, predict_x0=True).sample(x_T, steps=20, order=2, method="multistep")

The pieces live in this package: the schedules in ``vp_schedules`` (the discrete one is our
:class:`~ldm.models.diffusion.schedule.DiscreteSchedule`), the model conversions in ``model_wrapping``, the step
equation in ``exp_integrator`` and the step plans in ``step_plans``. Where this differs from the original:

- a discrete schedule holds log α constant outside t ∈ [1/N, 1] (the original extrapolates it linearly) and calls
  the model at τ = N t − 1 for any N (the original's (t − 1/N)·1000 equals this for N = 1000 only);
- the third-order multistep update gives the original's numbers with ``solver_type="dpm_solver"`` (the default;
  its second difference has half the Taylor weight, so the update is second order) and the exact Taylor weight,
  a third-order update, with ``solver_type="taylor"`` (the original ignores ``solver_type`` there);
- multistep order 3 with ``lower_order_final`` and singlestep order 1 with ``skip_type="logSNR"`` work (both
  crash in the original), a multistep run may be shorter than its order, ``"score"`` models are accepted;
- bad arguments raise ``ValueError`` instead of ``assert``; the adaptive solver logs its model calls.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import torch

from ldm.models.diffusion.dpm_solver.adaptive import Tolerance, integrate_adaptively
from ldm.models.diffusion.dpm_solver.exp_integrator import (
    check_solver_type,
    expand_dims,
    exponential_step,
    taylor_terms,
)
from ldm.models.diffusion.dpm_solver.model_wrapping import NoiseModel, model_wrapper
from ldm.models.diffusion.dpm_solver.step_plans import (
    check_order,
    multistep_orders,
    outer_indices,
    singlestep_orders,
    time_grid,
)
from ldm.models.diffusion.dpm_solver.vp_schedules import NoiseScheduleVP, interpolate_fn
from ldm.models.diffusion.prediction import split_prediction

logger = logging.getLogger(__name__)

__all__ = ["DPM_Solver", "NoiseScheduleVP", "expand_dims", "interpolate_fn", "model_wrapper"]

#: Imagen's dynamic-thresholding percentile (Saharia et al. 2022).
THRESHOLD_PERCENTILE = 0.995
#: The methods of :meth:`DPM_Solver.sample`.
METHODS = ("singlestep", "multistep", "singlestep_fixed", "adaptive")


def dynamic_threshold(x0: torch.Tensor, max_val: float) -> torch.Tensor:
    """Imagen's dynamic thresholding: s = max(p-quantile of |x̂_0| per sample, ``max_val``), x̂_0 ← clip(x̂_0, ±s)/s
    (p = 0.995); ``x0`` ``(B, ...)``."""
    s = torch.quantile(x0.abs().reshape(x0.shape[0], -1), THRESHOLD_PERCENTILE, dim=1).clamp(min=max_val)
    s = expand_dims(s, x0.dim())
    return torch.maximum(torch.minimum(x0, s), -s) / s


class DPM_Solver:  # the original's name
    """DPM-Solver (noise form, ``predict_x0=False``) or DPM-Solver++ (data form, ``predict_x0=True``, optionally
    with ``thresholding`` at ``max_val``) for ``model_fn(x, t_continuous) -> ε̂`` on ``noise_schedule``.

    Every update takes x ``(B, ...)`` and times ``(B,)``; ``model_s``/``model_prev_list`` hold earlier values of
    :meth:`model_fn` (ε̂ or x̂_0 by the form). The step is eq. (3) of ``exp_integrator``.
    """

    def __init__(
        self,
        model_fn: NoiseModel,
        noise_schedule: NoiseScheduleVP,
        predict_x0: bool = False,
        thresholding: bool = False,
        max_val: float = 1.0,
    ) -> None:
        self.model = model_fn
        self.noise_schedule = noise_schedule
        self.predict_x0 = predict_x0
        self.thresholding = thresholding
        self.max_val = max_val

    # -- what the model predicts ------------------------------------------------------------------------------

    def noise_prediction_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂(x_t, t) ``(B, ...)``."""
        return self.model(x, t)

    def data_prediction_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − σ_t ε̂)/α_t ``(B, ...)``, dynamically thresholded when ``thresholding``."""
        alpha = expand_dims(self.noise_schedule.marginal_alpha(t), x.dim())
        sigma = expand_dims(self.noise_schedule.marginal_std(t), x.dim())
        x0 = split_prediction("eps", x, self.noise_prediction_fn(x, t), alpha, sigma).x0
        return dynamic_threshold(x0, self.max_val) if self.thresholding else x0

    def model_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The prediction the solver integrates: x̂_0 for DPM-Solver++, ε̂ for DPM-Solver."""
        return self.data_prediction_fn(x, t) if self.predict_x0 else self.noise_prediction_fn(x, t)

    def denoise_to_zero_fn(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x̂_0(x_s, s): the first-order step from λ_s to λ = ∞ (the last step of DDPM / score SDE samplers)."""
        return self.data_prediction_fn(x, s)

    # -- time grids ----------------------------------------------------------------------------------------------

    def get_time_steps(self, skip_type: str, t_T: float, t_0: float, N: int, device: Any) -> torch.Tensor:
        """N + 1 times from ``t_T`` to ``t_0`` (``step_plans.time_grid``), default float dtype on ``device``."""
        grid = time_grid(self.noise_schedule, skip_type, t_T, t_0, N)
        return grid.to(device=device, dtype=torch.get_default_dtype())

    def get_orders_and_timesteps_for_singlestep_solver(
        self, steps: int, order: int, skip_type: str, t_T: float, t_0: float, device: Any
    ) -> tuple[torch.Tensor, list[int]]:
        """(outer times, orders) of DPM-Solver-fast: the orders of ``step_plans.singlestep_orders`` and the times
        between which each runs. With ``"logSNR"`` the outer times are λ-uniform; otherwise they are every
        order-th point of the ``steps``-interval grid."""
        outer, orders = self._singlestep_plan(steps, order, skip_type, t_T, t_0, "singlestep")
        return outer.to(device=device, dtype=torch.get_default_dtype()), orders

    # -- single steps --------------------------------------------------------------------------------------------

    def _time_at(self, s: torch.Tensor, t: torch.Tensor, fraction: Any) -> torch.Tensor:
        """The time whose λ is λ_s + ``fraction`` · (λ_t − λ_s)."""
        lambda_s, lambda_t = self.noise_schedule.marginal_lambda(s), self.noise_schedule.marginal_lambda(t)
        return self.noise_schedule.inverse_lambda(torch.lerp(lambda_s, lambda_t, fraction))

    def _first_order(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, model_s: torch.Tensor) -> torch.Tensor:
        step = exponential_step(self.noise_schedule, s, t, self.predict_x0)
        return step.advance(x, [(step.weights(1)[0], model_s)])

    def dpm_solver_first_update(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        t: torch.Tensor,
        model_s: torch.Tensor | None = None,
        return_intermediate: bool = False,
    ) -> Any:
        """DPM-Solver-1 from ``s`` to ``t`` (DDIM): x_t = a x_s + b w_0 m_s. ``return_intermediate`` adds
        ``{"model_s": m_s}``."""
        model_s = self.model_fn(x, s) if model_s is None else model_s
        x_t = self._first_order(x, s, t, model_s)
        return (x_t, {"model_s": model_s}) if return_intermediate else x_t

    def singlestep_dpm_solver_second_update(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        t: torch.Tensor,
        r1: Any = 0.5,
        model_s: torch.Tensor | None = None,
        return_intermediate: bool = False,
        solver_type: str = "dpm_solver",
    ) -> Any:
        """Singlestep DPM-Solver-2 (2S): a first-order step to s_1 at λ_s + r_1 h, then from s with the slope
        D_1 = (m_1 − m_s)/r_1. ``return_intermediate`` adds ``model_s``, ``model_s1``."""
        check_solver_type(solver_type)
        r1 = 0.5 if r1 is None else r1
        s1 = self._time_at(s, t, r1)
        model_s = self.model_fn(x, s) if model_s is None else model_s
        model_s1 = self.model_fn(self._first_order(x, s, s1, model_s), s1)
        step = exponential_step(self.noise_schedule, s, t, self.predict_x0)
        slope = taylor_terms([0.0, r1], [model_s, model_s1])[1]
        x_t = step.advance(x, [(step.weights(1)[0], model_s), (step.slope_weight(solver_type), slope)])
        return (x_t, {"model_s": model_s, "model_s1": model_s1}) if return_intermediate else x_t

    def singlestep_dpm_solver_third_update(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        t: torch.Tensor,
        r1: Any = 1.0 / 3.0,
        r2: Any = 2.0 / 3.0,
        model_s: torch.Tensor | None = None,
        model_s1: torch.Tensor | None = None,
        return_intermediate: bool = False,
        solver_type: str = "dpm_solver",
    ) -> Any:
        """Singlestep DPM-Solver-3 (3S): stages at λ_s + r_1 h (first order) and λ_s + r_2 h (second order, the
        slope from the r_1 stage), then from s: ``"dpm_solver"`` with w_1 on the slope (m_2 − m_s)/r_2 (Lu et al.
        2022a, Algorithm 5), ``"taylor"`` with D_1, D_2 of the quadratic through the three values.
        ``return_intermediate`` adds ``model_s``, ``model_s1``, ``model_s2``."""
        check_solver_type(solver_type)
        r1 = 1.0 / 3.0 if r1 is None else r1
        r2 = 2.0 / 3.0 if r2 is None else r2
        s1, s2 = self._time_at(s, t, r1), self._time_at(s, t, r2)
        model_s = self.model_fn(x, s) if model_s is None else model_s
        if model_s1 is None:
            model_s1 = self.model_fn(self._first_order(x, s, s1, model_s), s1)
        to_s2 = exponential_step(self.noise_schedule, s, s2, self.predict_x0)
        stage_weights = to_s2.weights(2)
        slope_s2 = r2 * taylor_terms([0.0, r1], [model_s, model_s1])[1]
        x_s2 = to_s2.advance(x, [(stage_weights[0], model_s), (stage_weights[1], slope_s2)])
        model_s2 = self.model_fn(x_s2, s2)
        step = exponential_step(self.noise_schedule, s, t, self.predict_x0)
        weights = step.weights(3)
        if solver_type == "taylor":
            terms = taylor_terms([0.0, r1, r2], [model_s, model_s1, model_s2])
            x_t = step.advance(x, list(zip(weights, terms)))
        else:
            x_t = step.advance(x, [(weights[0], model_s), (weights[1], (model_s2 - model_s) / r2)])
        models = {"model_s": model_s, "model_s1": model_s1, "model_s2": model_s2}
        return (x_t, models) if return_intermediate else x_t

    def _multistep(
        self, x: torch.Tensor, history: list, times: list, t: torch.Tensor, solver_type: str
    ) -> torch.Tensor:
        """One multistep update from ``times[-1]`` to ``t`` with the Taylor terms of the polynomial through
        the len(history) ≤ 3 latest values (eq. 3); order 2 weighs its slope as ``solver_type`` says."""
        check_solver_type(solver_type)
        step = exponential_step(self.noise_schedule, times[-1], t, self.predict_x0)
        offsets = [step.offset(self.noise_schedule.marginal_lambda(u)) for u in reversed(times)]
        terms = taylor_terms(offsets, list(reversed(history)))
        weights = step.weights(len(terms))
        if len(terms) == 2:
            weights[1] = step.slope_weight(solver_type)
        if len(terms) == 3 and solver_type == "dpm_solver":
            weights[2] = 0.5 * weights[2]  # the original's 3M weight (second order); "taylor" keeps the exact one
        return step.advance(x, list(zip(weights, terms)))

    def multistep_dpm_solver_second_update(
        self,
        x: torch.Tensor,
        model_prev_list: list,
        t_prev_list: list,
        t: torch.Tensor,
        solver_type: str = "dpm_solver",
    ) -> torch.Tensor:
        """Multistep DPM-Solver-2 (2M) from ``t_prev_list[-1]`` to ``t``: the slope is the backward difference
        of the last two model values, D_1 = (m_0 − m_{−1})/r_0 with r_0 = h_{−1}/h."""
        return self._multistep(x, model_prev_list[-2:], t_prev_list[-2:], t, solver_type)

    def multistep_dpm_solver_third_update(
        self,
        x: torch.Tensor,
        model_prev_list: list,
        t_prev_list: list,
        t: torch.Tensor,
        solver_type: str = "dpm_solver",
    ) -> torch.Tensor:
        """Multistep DPM-Solver-3 (3M) from ``t_prev_list[-1]`` to ``t``: D_1 and D_2 of the quadratic through the
        last three model values, weighted by w_1 and w_2 of eq. (4). ``solver_type="dpm_solver"`` (the default)
        gives the original's numbers, which weigh D_2 by w_2/2 (so the update is second order); ``"taylor"`` uses
        the exact w_2 (third order; the original ignores ``solver_type`` here)."""
        return self._multistep(x, model_prev_list[-3:], t_prev_list[-3:], t, solver_type)

    def singlestep_dpm_solver_update(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        t: torch.Tensor,
        order: int,
        return_intermediate: bool = False,
        solver_type: str = "dpm_solver",
        r1: Any = None,
        r2: Any = None,
    ) -> Any:
        """The singlestep update of ``order`` 1, 2 or 3 from ``s`` to ``t`` (stage fractions ``r1``, ``r2``)."""
        check_order(order)
        if order == 1:
            return self.dpm_solver_first_update(x, s, t, return_intermediate=return_intermediate)
        update, fractions = {
            2: (self.singlestep_dpm_solver_second_update, {"r1": r1}),
            3: (self.singlestep_dpm_solver_third_update, {"r1": r1, "r2": r2}),
        }[order]
        return update(x, s, t, return_intermediate=return_intermediate, solver_type=solver_type, **fractions)

    def multistep_dpm_solver_update(
        self,
        x: torch.Tensor,
        model_prev_list: list,
        t_prev_list: list,
        t: torch.Tensor,
        order: int,
        solver_type: str = "dpm_solver",
    ) -> torch.Tensor:
        """The multistep update of ``order`` 1, 2 or 3 from ``t_prev_list[-1]`` to ``t`` with the last ``order``
        model values."""
        check_order(order)
        if len(model_prev_list) < order or len(t_prev_list) < order:
            raise ValueError(f"a multistep update of order {order} needs {order} earlier model values and times.")
        return self._multistep(x, list(model_prev_list)[-order:], list(t_prev_list)[-order:], t, solver_type)

    # -- whole runs ----------------------------------------------------------------------------------------------

    def dpm_solver_adaptive(
        self,
        x: torch.Tensor,
        order: int,
        t_T: float,
        t_0: float,
        h_init: float = 0.05,
        atol: float = 0.0078,
        rtol: float = 0.05,
        theta: float = 0.9,
        t_err: float = 1e-5,
        solver_type: str = "dpm_solver",
    ) -> torch.Tensor:
        """Adaptive step size from ``t_T`` to ``t_0`` (Lu et al. 2022a, §4 and Algorithm 4): DPM-Solver-12
        (``order`` 2: first vs second order) or DPM-Solver-23 (``order`` 3: second vs third order) with the
        lower step's model values reused by the higher one; see ``adaptive.integrate_adaptively``."""
        if order == 2:
            pair = (
                lambda x_, s, t: self.dpm_solver_first_update(x_, s, t, return_intermediate=True),
                lambda x_, s, t, **cached: self.singlestep_dpm_solver_second_update(
                    x_, s, t, r1=0.5, solver_type=solver_type, **cached
                ),
            )
        elif order == 3:
            pair = (
                lambda x_, s, t: self.singlestep_dpm_solver_second_update(
                    x_, s, t, r1=1.0 / 3.0, return_intermediate=True, solver_type=solver_type
                ),
                lambda x_, s, t, **cached: self.singlestep_dpm_solver_third_update(
                    x_, s, t, r1=1.0 / 3.0, r2=2.0 / 3.0, solver_type=solver_type, **cached
                ),
            )
        else:
            raise ValueError(f"the adaptive DPM-Solver has order 2 or 3, got {order!r}.")
        tolerance = Tolerance(atol=atol, rtol=rtol, theta=theta, t_err=t_err)
        x, calls = integrate_adaptively(x, pair, self.noise_schedule, order, (t_T, t_0), h_init, tolerance)
        logger.info("adaptive DPM-Solver: %d model calls", calls)
        return x

    def sample(
        self,
        x: torch.Tensor,
        steps: int = 20,
        t_start: float | None = None,
        t_end: float | None = None,
        order: int = 3,
        skip_type: str = "time_uniform",
        method: str = "singlestep",
        lower_order_final: bool = True,
        denoise_to_zero: bool = False,
        solver_type: str = "dpm_solver",
        atol: float = 0.0078,
        rtol: float = 0.05,
    ) -> torch.Tensor:
        """Solve the diffusion ODE from ``x`` ``(B, ...)`` at ``t_start`` (default T) to ``t_end`` (default 1/N).

        ``method``: ``"singlestep"`` (DPM-Solver-fast: ``step_plans.singlestep_orders``, ``steps`` model calls),
        ``"multistep"`` (``steps`` updates of ``order``, the first ones of lower order while the history fills,
        and with ``lower_order_final`` the last ones too on runs under 15 steps; ``steps`` calls),
        ``"singlestep_fixed"`` (steps // order updates of ``order``) or ``"adaptive"`` (``order`` 2 or 3 with
        ``atol``/``rtol``; ``steps`` unused). ``skip_type`` spaces the times (``step_plans``);
        ``denoise_to_zero`` returns x̂_0 at t_end (one call more). Times are float64 for float64 ``x``, else float32.

        A multistep run starts with updates of order 1, 2, ... while its history fills (as the original does):
        their local errors keep a whole order-3 run second order as the steps shrink, though far more accurate
        than order 2 at the same steps.
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        t_0 = 1.0 / self.noise_schedule.total_N if t_end is None else float(t_end)
        t_T = self.noise_schedule.T if t_start is None else float(t_start)
        time_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            if method == "adaptive":
                x = self.dpm_solver_adaptive(x, order, t_T, t_0, atol=atol, rtol=rtol, solver_type=solver_type)
            elif method == "multistep":
                grid = time_grid(self.noise_schedule, skip_type, t_T, t_0, steps).to(x.device, time_dtype)
                x = self._run_multistep(x, grid, multistep_orders(steps, order, lower_order_final), solver_type)
            else:
                x = self._run_singlestep(x, steps, order, skip_type, (t_T, t_0), method, solver_type, time_dtype)
            if denoise_to_zero:
                x = self.denoise_to_zero_fn(x, torch.full((x.shape[0],), t_0, dtype=time_dtype, device=x.device))
        return x

    def _run_multistep(
        self, x: torch.Tensor, grid: torch.Tensor, orders: list[int], solver_type: str
    ) -> torch.Tensor:
        """Multistep updates along ``grid`` with the given order per step; the model is not called at the end."""
        batch = x.shape[0]
        times = deque([grid[0].expand(batch)], maxlen=3)
        history = deque([self.model_fn(x, times[0])], maxlen=3)
        for i, step_order in enumerate(orders, start=1):
            t = grid[i].expand(batch)
            x = self.multistep_dpm_solver_update(x, history, times, t, step_order, solver_type=solver_type)
            times.append(t)
            if i < len(orders):
                history.append(self.model_fn(x, t))
        return x

    def _singlestep_plan(
        self, steps: int, order: int, skip_type: str, t_T: float, t_0: float, method: str
    ) -> tuple[torch.Tensor, list[int]]:
        """Float64 outer times and the order of each singlestep interval, for ``singlestep`` (DPM-Solver-fast)
        or ``singlestep_fixed``."""
        if method == "singlestep_fixed":
            check_order(order)
            orders = [order] * (steps // order)
            return time_grid(self.noise_schedule, skip_type, t_T, t_0, len(orders)), orders
        orders = singlestep_orders(steps, order)
        if skip_type == "logSNR":
            return time_grid(self.noise_schedule, skip_type, t_T, t_0, len(orders)), orders
        return time_grid(self.noise_schedule, skip_type, t_T, t_0, steps)[outer_indices(orders)], orders

    def _run_singlestep(
        self,
        x: torch.Tensor,
        steps: int,
        order: int,
        skip_type: str,
        ends: tuple[float, float],
        method: str,
        solver_type: str,
        time_dtype: torch.dtype,
    ) -> torch.Tensor:
        """Singlestep updates between the outer times; r_1, r_2 of each interval come from its own
        ``skip_type`` grid of ``order`` sub-intervals (the original's placement of the stages)."""
        outer, orders = self._singlestep_plan(steps, order, skip_type, *ends, method)
        for start, end, step_order in zip(outer[:-1].tolist(), outer[1:].tolist(), orders):
            inner = time_grid(self.noise_schedule, skip_type, start, end, step_order)
            lambdas = self.noise_schedule.marginal_lambda(inner)
            fractions = ((lambdas[1:-1] - lambdas[0]) / (lambdas[-1] - lambdas[0])).tolist()
            r1, r2 = (fractions + [None, None])[:2]
            s, t = (torch.full((x.shape[0],), u, dtype=time_dtype, device=x.device) for u in (start, end))
            x = self.singlestep_dpm_solver_update(x, s, t, step_order, solver_type=solver_type, r1=r1, r2=r2)
        return x
