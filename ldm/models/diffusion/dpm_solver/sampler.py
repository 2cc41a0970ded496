"""``DPMSolverSampler``: DPM-Solver++(2M) with classifier-free guidance behind the DDIM sampler's ``sample`` call."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch

from ldm.models.diffusion.dpm_solver.solver import sample_dpmpp_2m, time_steps
from ldm.models.diffusion.sampler_core import (
    DiffusionModel,
    checked_keywords,
)
from ldm.models.diffusion.sampler_frontend import SampleResult, SamplerFrontEnd, SamplingRequest
from ldm.models.diffusion.schedule import DiscreteSchedule

logger = logging.getLogger(__name__)

#: The original DPM-Solver wrapper's name of each ``parameterization`` (eps-prediction is its "noise" model).
MODEL_TYPES = {"eps": "noise", "v": "v"}


class DPMSolverSampler(SamplerFrontEnd):
    """Samples a discrete-time model (eps, x0 or v) with DPM-Solver++(2M) (S steps = S model calls)."""

    sample_options: ClassVar[dict[str, Any]] = {"skip_type": "time_uniform"}

    @checked_keywords
    def __init__(self, model: DiffusionModel, device: torch.device | str | None = None) -> None:
        super().__init__(model, device=device)
        self.discrete_schedule = DiscreteSchedule.from_model(model)
        self.register_buffer("alphas_cumprod", self.discrete_schedule.alphas_cumprod32.clone())

    def run(self, request: SamplingRequest, skip_type: str) -> SampleResult:
        """``sample`` for DPM-Solver++(2M): S steps from model time N − 1 to 0 (multistep order 2; below 15 steps
        the last step is first order), ``skip_type`` ``"time_uniform"`` or ``"logSNR"``. The DDIM-only options
        (η > 0, mask/x0, quantize_x0, temperature, noise_dropout, score_corrector) raise ``ValueError``;
        ``x_inter``/``pred_x0`` start at x_T and are logged every ``log_every_t`` steps and after the last."""
        request.reject_ddim_only_options("DPMSolverSampler (a deterministic ODE solver)")
        schedule = self.discrete_schedule
        times = time_steps(schedule, request.steps, skip_type)
        if request.verbose:
            logger.info("Data shape for DPM-Solver++ sampling is %s, %d steps (%s)", request.size, request.steps,
                        skip_type)
        img = request.initial_noise(self.device)
        intermediates, on_step = request.recorder(img)
        data_prediction = request.data_prediction(self.model, schedule)
        samples = sample_dpmpp_2m(data_prediction, img, times, schedule, callback=on_step,
                                  disable=request.disable_progress)
        return samples, intermediates
