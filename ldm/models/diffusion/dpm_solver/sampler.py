"""``DPMSolverSampler``: DPM-Solver++(2M) with classifier-free guidance behind the DDIM sampler's ``sample`` call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from ldm.models.diffusion.dpm_solver.solver import sample_dpmpp_2m, time_steps
from ldm.models.diffusion.sampler_core import (
    Conditioning,
    DiffusionModel,
    checked_keywords,
    denoise,
    warn_on_batch_mismatch,
)
from ldm.models.diffusion.schedule import DiscreteSchedule

logger = logging.getLogger(__name__)


class DPMSolverSampler:
    """Samples a discrete-time model (eps, x0 or v) with DPM-Solver++(2M) (S steps = S model calls)."""

    @checked_keywords
    def __init__(self, model: DiffusionModel, device: torch.device | str | None = None) -> None:
        self.model = model
        self._device = None if device is None else torch.device(device)
        self.discrete_schedule = DiscreteSchedule.from_model(model)
        self.register_buffer("alphas_cumprod", self.discrete_schedule.alphas_cumprod32.clone())

    @property
    def device(self) -> torch.device:
        return self._device if self._device is not None else self.model.betas.device

    def register_buffer(self, name: str, attr: Any) -> None:
        """Store ``attr`` as ``self.<name>``, moving tensors to :attr:`device`."""
        if isinstance(attr, torch.Tensor):
            attr = attr.to(self.device)
        setattr(self, name, attr)

    @checked_keywords
    @torch.no_grad()
    def sample(
        self,
        S: int,
        batch_size: int,
        shape: tuple[int, ...],
        conditioning: Conditioning = None,
        callback: Callable[[int], None] | None = None,
        normals_sequence: Any = None,
        img_callback: Callable[[torch.Tensor, int], None] | None = None,
        quantize_x0: bool = False,
        eta: float = 0.0,
        mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        temperature: float = 1.0,
        noise_dropout: float = 0.0,
        score_corrector: Any = None,
        corrector_kwargs: dict | None = None,
        verbose: bool = True,
        x_T: torch.Tensor | None = None,
        log_every_t: int = 100,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Conditioning = None,
        generator: torch.Generator | None = None,
        disable_progress: bool = False,
        skip_type: str = "time_uniform",
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Sample ``(batch_size, *shape)`` latents in S DPM-Solver++(2M) steps from model time N − 1 to 0
        (multistep order 2; below 15 steps the last step is first order).

        The arguments of ``DDIMSampler.sample``; the DDIM-only options (η > 0, mask/x0, quantize_x0,
        temperature, noise_dropout, score_corrector) raise ``ValueError`` when set, an unknown keyword
        ``TypeError``. ``skip_type`` is ``"time_uniform"`` or ``"logSNR"``. Returns ``(samples, intermediates)``
        with ``x_inter``/``pred_x0`` starting at x_T and logged every ``log_every_t`` steps and after the last.
        """
        unsupported = {
            "eta": eta != 0.0,
            "mask/x0": mask is not None or x0 is not None,
            "quantize_x0": quantize_x0,
            "temperature": temperature != 1.0,
            "noise_dropout": noise_dropout != 0.0,
            "score_corrector": score_corrector is not None,
        }
        if any(unsupported.values()):
            names = ", ".join(name for name, is_set in unsupported.items() if is_set)
            raise ValueError(
                f"DPMSolverSampler is a deterministic ODE solver and does not support {names}; "
                "use DDIMSampler for these options."
            )
        warn_on_batch_mismatch(conditioning, batch_size)
        size = (batch_size, *shape)
        schedule = self.discrete_schedule
        times = time_steps(schedule, S, skip_type)
        if verbose:
            logger.info("Data shape for DPM-Solver++ sampling is %s, %d steps (%s)", size, S, skip_type)
        img = x_T if x_T is not None else torch.randn(size, device=self.device, generator=generator)

        def data_prediction(x: torch.Tensor, tau: float) -> torch.Tensor:
            """The guided x̂_0 at model time τ (fractional between the model's steps)."""
            t_in = torch.full((x.shape[0],), tau, device=x.device)
            alpha, sigma = float(schedule.alpha(tau)), float(schedule.sigma(tau))
            return denoise(
                self.model, x, t_in, conditioning, alpha, sigma, unconditional_conditioning,
                unconditional_guidance_scale,
            ).x0  # fmt: skip

        intermediates = {"x_inter": [img], "pred_x0": [img]}

        def on_step(i: int, x: torch.Tensor, pred_x0: torch.Tensor) -> None:
            if callback:
                callback(i)
            if img_callback:
                img_callback(pred_x0, i)
            if (i + 1) % log_every_t == 0 or i == S - 1:
                intermediates["x_inter"].append(x)
                intermediates["pred_x0"].append(pred_x0)

        samples = sample_dpmpp_2m(data_prediction, img, times, schedule, callback=on_step, disable=disable_progress)
        return samples, intermediates
