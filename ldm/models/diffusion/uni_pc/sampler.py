"""``UniPCSampler``: UniPC with classifier-free guidance behind the DDIM sampler's ``sample`` call."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch

from ldm.models.diffusion.dpm_solver.solver import time_steps
from ldm.models.diffusion.sampler_core import DiffusionModel, checked_keywords
from ldm.models.diffusion.sampler_frontend import SampleResult, SamplerFrontEnd, SamplingRequest
from ldm.models.diffusion.schedule import DiscreteSchedule
from ldm.models.diffusion.uni_pc.solver import check_settings, sample_unipc_multistep

logger = logging.getLogger(__name__)

SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic")


def unipc_time_steps(schedule: DiscreteSchedule, steps: int, skip_type: str) -> torch.Tensor:
    """S + 1 descending model times τ from N − 1 to 0, float64.

    ``time_uniform``: uniform in τ; ``logSNR``: uniform in λ_τ; ``time_quadratic``: uniform in √t for the
    continuous time t = (τ + 1)/N ∈ [1/N, 1] of the discrete-time convention (Lu et al. 2022), so τ = N t − 1.
    """
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"skip_type {skip_type!r} is unknown; use one of {SKIP_TYPES}.")
    if steps < 1:
        raise ValueError(f"UniPC needs at least one step, got S={steps}.")
    if skip_type != "time_quadratic":
        return time_steps(schedule, steps, skip_type)
    total = schedule.num_timesteps
    root_t = torch.linspace(1.0, (1.0 / total) ** 0.5, steps + 1, dtype=torch.float64)
    return root_t**2 * total - 1.0


class UniPCSampler(SamplerFrontEnd):
    """Samples a discrete-time model (eps, x0 or v) with multistep UniPC (S steps = S model calls)."""

    sample_options: ClassVar[dict[str, Any]] = {
        "order": 3, "variant": "bh1", "skip_type": "time_uniform", "lower_order_final": True,
    }  # fmt: skip

    @checked_keywords
    def __init__(self, model: DiffusionModel, device: torch.device | str | None = None) -> None:
        super().__init__(model, device=device)
        self.discrete_schedule = DiscreteSchedule.from_model(model)
        self.register_buffer("alphas_cumprod", self.discrete_schedule.alphas_cumprod32.clone())

    def run(
        self, request: SamplingRequest, order: int, variant: str, skip_type: str, lower_order_final: bool
    ) -> SampleResult:
        """``sample`` for UniPC: S steps from model time N − 1 to 0 (no final denoising step), of ``order`` 1–3
        with B(h) ``variant`` ``"bh1"`` or ``"bh2"``, times by ``skip_type`` (:func:`unipc_time_steps`); the
        last steps fall to first order with ``lower_order_final``. The DDIM-only options (η > 0, mask/x0,
        quantize_x0, temperature, noise_dropout, score_corrector) raise ``ValueError``; ``x_inter``/``pred_x0``
        start at x_T and are logged every ``log_every_t`` steps and after the last."""
        request.reject_ddim_only_options("UniPCSampler (a deterministic ODE solver)")
        check_settings(order, variant)
        schedule = self.discrete_schedule
        times = unipc_time_steps(schedule, request.steps, skip_type)
        if request.verbose:
            logger.info("Data shape for UniPC sampling is %s, %d steps (%s, order %d, %s)", request.size,
                        request.steps, variant, order, skip_type)
        img = request.initial_noise(self.device)
        intermediates, on_step = request.recorder(img)
        predict = request.data_prediction(self.model, schedule)
        samples = sample_unipc_multistep(
            lambda x, i: predict(x, float(times[i])), img, schedule.alpha(times), schedule.sigma(times),
            order=order, variant=variant, lower_order_final=lower_order_final, callback=on_step,
            disable=request.disable_progress,
        )  # fmt: skip
        return samples, intermediates
