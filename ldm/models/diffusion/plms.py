"""PLMS sampling: pseudo linear multistep (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models").

The DDIM update is applied with an ε' extrapolated from the last ε's (Adams–Bashforth); the first step has no
history and uses a pseudo improved-Euler (Heun) step, which costs one extra model call:

- step 1:  ε' = (ε(x_t, t) + ε(x̃_{t_next}, t_next)) / 2, x̃ the plain DDIM step;
- step 2:  ε' = (3 ε_0 − ε_{−1}) / 2;
- step 3:  ε' = (23 ε_0 − 16 ε_{−1} + 5 ε_{−2}) / 12;
- then:    ε' = (55 ε_0 − 59 ε_{−1} + 37 ε_{−2} − 9 ε_{−3}) / 24.

Only η = 0 is defined. ε(x, t) is the model's ε̂, whatever it predicts (eps, x0 or v).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch

from ldm.models.diffusion.sampler_core import Conditioning
from ldm.models.diffusion.sampler_frontend import SampleResult, SamplingRequest
from ldm.models.diffusion.sampling_common import DDIMScheduleSampler, LoopOptions, StepOptions

logger = logging.getLogger(__name__)


def adams_bashforth_eps(e_t: torch.Tensor, old_eps: list[torch.Tensor]) -> torch.Tensor:
    """ε' of the 2-, 3- or 4-step Adams–Bashforth rule from ε_0 = ``e_t`` and ``old_eps`` = [..., ε_{−2}, ε_{−1}]."""
    if len(old_eps) == 1:
        return (3 * e_t - old_eps[-1]) / 2
    if len(old_eps) == 2:
        return (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
    return (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24


class PLMSSampler(DDIMScheduleSampler):
    """PLMS sampler with the DDIM sampler's interface (see :class:`DDIMScheduleSampler` for the buffers)."""

    def make_schedule(
        self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0, verbose: bool = True
    ) -> None:
        """The DDIM schedule with η = 0; any other η raises ``ValueError``."""
        if ddim_eta != 0:
            raise ValueError(f"ddim_eta must be 0 for PLMS (got eta={ddim_eta}); use DDIMSampler for η > 0.")
        super().make_schedule(ddim_num_steps, ddim_discretize=ddim_discretize, ddim_eta=ddim_eta, verbose=verbose)

    sample_options: ClassVar[dict[str, Any]] = {"dynamic_threshold": None, "timestep_spacing": "uniform"}

    def run(self, request: SamplingRequest, dynamic_threshold: float | None, timestep_spacing: str) -> SampleResult:
        """``sample`` for PLMS: S steps (S + 1 model calls) spaced by ``timestep_spacing`` (as for DDIM); η must be
        0 and ``dynamic_threshold`` None."""
        if dynamic_threshold is not None:
            raise NotImplementedError("dynamic_threshold is not implemented for PLMS sampling; leave it None.")
        self.make_schedule(
            ddim_num_steps=request.steps, ddim_discretize=timestep_spacing, ddim_eta=request.eta,
            verbose=request.verbose,
        )  # fmt: skip
        logger.info("Data shape for PLMS sampling is %s", request.size)
        return self.plms_sampling(request.conditioning, request.size, **request.loop_keywords())

    @torch.no_grad()
    def plms_sampling(
        self, cond: Conditioning, shape: tuple[int, ...], **options: Any
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """The PLMS loop over ``shape`` = ``(B, ...)``, keeping the last three ε's; needs :meth:`make_schedule`.
        ``options`` are the original's keywords (those of ``DDIMSampler.ddim_sampling`` but
        ``dynamic_threshold`` and ``ucg_schedule``)."""
        opts = LoopOptions.parse(
            f"{type(self).__name__}.plms_sampling", options, excluded=("dynamic_threshold", "ucg_schedule")
        )
        old_eps: list[torch.Tensor] = []
        step_options = opts.step_options()

        def step(img: torch.Tensor, ts: torch.Tensor, index: int, ts_next: torch.Tensor):
            img, pred_x0, e_t = self._plms_step(img, cond, ts, index, old_eps, ts_next, step_options)
            old_eps.append(e_t)
            if len(old_eps) >= 4:
                old_eps.pop(0)
            return img, pred_x0

        time_range = self._time_range(opts.timesteps, opts.ddim_use_original_steps)
        return self._sample_loop(step, shape, "PLMS Sampler", time_range, opts)

    @torch.no_grad()
    def p_sample_plms(
        self,
        x: torch.Tensor,
        c: Conditioning,
        t: torch.Tensor,
        index: int,
        old_eps: list[torch.Tensor] | None = None,
        t_next: torch.Tensor | None = None,
        **options: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One PLMS step from x_t ``(B, ...)``; ``old_eps`` holds up to three previous ε's (oldest first) and
        ``t_next`` ``(B,)`` is the next timestep (used by the first, Heun-like step). ``options`` are the
        original's keywords (:class:`~ldm.models.diffusion.sampling_common.StepOptions`).

        Returns ``(x_prev, pred_x0, ε(x_t, t))``.
        """
        parsed = StepOptions.parse(f"{type(self).__name__}.p_sample_plms", options)
        return self._plms_step(x, c, t, index, old_eps or [], t_next, parsed)

    def _plms_step(
        self, x: torch.Tensor, c: Conditioning, t: torch.Tensor, index: int, old_eps: list[torch.Tensor],
        t_next: torch.Tensor | None, options: StepOptions,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`p_sample_plms` with its options gathered in ``options``."""

        def eps(x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
            return self._denoise(x_in, c, t_in, self._marginal_at(x_in, t_in), options).eps

        def update(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self._ddim_update(x, e, index, options)

        e_t = eps(x, t)
        if old_eps:
            e_t_prime = adams_bashforth_eps(e_t, old_eps)
        else:
            if t_next is None:
                raise ValueError("the first PLMS step (empty old_eps) needs t_next, the following timestep.")
            x_prev, _ = update(e_t)
            e_t_prime = (e_t + eps(x_prev, t_next)) / 2
        x_prev, pred_x0 = update(e_t_prime)
        return x_prev, pred_x0, e_t
