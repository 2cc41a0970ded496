"""DDIM sampling (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12), with classifier-free guidance.

``DDIMSampler(model).sample(S, batch_size, shape, conditioning, ...)`` walks S of the model's timesteps
(``[1, 1 + T/S, ...]``) from x_T ~ N(0, I); η = 0 is the deterministic sampler, η = 1 the DDPM-like one.
``stochastic_encode`` + ``decode`` are the img2img pair: noise x_0 to a DDIM step, then denoise from it.
Works for eps, x0 and v models (the update uses the model's (x̂_0, ε̂)).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch

from ldm.models.diffusion.sampler_core import Conditioning, batch_coefficient, progress
from ldm.models.diffusion.sampler_frontend import SampleResult, SamplingRequest
from ldm.models.diffusion.sampling_common import DDIMScheduleSampler, LoopOptions, Step, StepOptions

logger = logging.getLogger(__name__)


class DDIMSampler(DDIMScheduleSampler):
    """DDIM sampler over a model's discrete schedule (see :class:`DDIMScheduleSampler` for the buffers)."""

    sample_options: ClassVar[dict[str, Any]] = {
        "dynamic_threshold": None, "ucg_schedule": None, "timestep_spacing": "uniform",
    }  # fmt: skip

    def run(
        self, request: SamplingRequest, dynamic_threshold: float | None, ucg_schedule: Sequence[float] | None,
        timestep_spacing: str,
    ) -> SampleResult:
        """``sample`` for DDIM: S steps at η = ``eta``, spaced by ``timestep_spacing`` (``"uniform"``, ``"quad"`` or
        ``"trailing"``, the ``ddim_discretize`` of :meth:`make_schedule`); ``ucg_schedule`` gives one guidance scale
        per step instead of ``unconditional_guidance_scale``; ``dynamic_threshold`` must stay None."""
        self.make_schedule(
            ddim_num_steps=request.steps, ddim_discretize=timestep_spacing, ddim_eta=request.eta,
            verbose=request.verbose,
        )  # fmt: skip
        logger.info("Data shape for DDIM sampling is %s, eta %s", request.size, request.eta)
        return self.ddim_sampling(
            request.conditioning, request.size, **request.loop_keywords(), dynamic_threshold=dynamic_threshold,
            ucg_schedule=ucg_schedule,
        )  # fmt: skip

    @torch.no_grad()
    def ddim_sampling(
        self, cond: Conditioning, shape: tuple[int, ...], **options: Any
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """The DDIM loop over ``shape`` = ``(B, ...)``; needs :meth:`make_schedule` first. ``options`` are the
        original's keywords (:class:`~ldm.models.diffusion.sampling_common.LoopOptions`: ``x_T``,
        ``ddim_use_original_steps``, ``timesteps``, ``mask``/``x0``, guidance, ``ucg_schedule``, ...)."""
        opts = LoopOptions.parse(f"{type(self).__name__}.ddim_sampling", options)
        time_range = self._time_range(opts.timesteps, opts.ddim_use_original_steps)
        steps, ucg_schedule = len(time_range), opts.ucg_schedule
        if ucg_schedule is not None and len(ucg_schedule) != steps:
            raise ValueError(
                f"ucg_schedule has {len(ucg_schedule)} guidance scales for {steps} steps; give one per step."
            )

        def guidance(index: int) -> float:
            return opts.unconditional_guidance_scale if ucg_schedule is None else ucg_schedule[steps - 1 - index]

        _reject_dynamic_threshold(opts.dynamic_threshold)
        step = self._guided_step(cond, guidance, opts.step_options())
        return self._sample_loop(step, shape, "DDIM Sampler", time_range, opts)

    def _guided_step(self, cond: Conditioning, guidance: Callable[[int], float], options: StepOptions) -> Step:
        """A loop step running the DDIM step with ``options``, guided at scale ``guidance(index)``."""

        def step(img: torch.Tensor, ts: torch.Tensor, index: int, ts_next: torch.Tensor):
            return self._ddim_step(img, cond, ts, index, replace(options, unconditional_guidance_scale=guidance(index)))

        return step

    @torch.no_grad()
    def p_sample_ddim(
        self, x: torch.Tensor, c: Conditioning, t: torch.Tensor, index: int, dynamic_threshold: float | None = None,
        **options: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One guided DDIM step from x_t ``(B, ...)`` at DDPM times ``t`` ``(B,)``, schedule position ``index``.

        ``options`` are the original's keywords (:class:`~ldm.models.diffusion.sampling_common.StepOptions`:
        ``use_original_steps``, ``temperature``, guidance, ...); ``dynamic_threshold`` must stay None.
        Returns ``(x_prev, pred_x0)``.
        """
        _reject_dynamic_threshold(dynamic_threshold)
        return self._ddim_step(x, c, t, index, StepOptions.parse(f"{type(self).__name__}.p_sample_ddim", options))

    def _ddim_step(
        self, x: torch.Tensor, c: Conditioning, t: torch.Tensor, index: int, options: StepOptions
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (2) from the model's guided (x̂_0, ε̂) at x_t; returns ``(x_prev, pred_x0)``."""
        prediction = self._denoise(x, c, t, self._marginal(x, index, options.use_original_steps), options)
        return self._ddim_update(x, prediction, index, options)

    @torch.no_grad()
    def stochastic_encode(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        use_original_steps: bool = False,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """q(x_t | x_0) sample √ᾱ_t x_0 + √(1 − ᾱ_t) ε for ``x0`` ``(B, ...)``.

        ``t`` ``(B,)`` (long) indexes the DDIM schedule (``ddim_alphas[t]``), or the DDPM schedule with
        ``use_original_steps``. ``noise`` defaults to a fresh N(0, I) draw.
        """
        if noise is None:
            noise = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
        signal, spread = (
            (self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod)
            if use_original_steps
            else (self.ddim_alphas.sqrt(), self.ddim_sqrt_one_minus_alphas)
        )
        per_sample = (-1,) + (1,) * (x0.ndim - 1)
        return signal[t].view(per_sample) * x0 + spread[t].view(per_sample) * noise

    @torch.no_grad()
    def encode(
        self,
        x0: torch.Tensor,
        c: Conditioning,
        t_enc: int,
        use_original_steps: bool = False,
        return_intermediates: int | None = None,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Conditioning = None,
        callback: Callable[[int], None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Deterministic DDIM inversion: x_0 ``(B, ...)`` carried up the first ``t_enc`` schedule positions, the η = 0
        update run backwards, so that :meth:`decode` from ``t_enc`` comes back close to x_0.

        Step i moves the latent from level ᾱ_prev[i] to ᾱ[i] with the guided ε̂ of the model at the destination
        timestep: x ← √(ᾱ[i]/ᾱ_prev[i])·x + √ᾱ[i]·(√(1/ᾱ[i] − 1) − √(1/ᾱ_prev[i] − 1))·ε̂.
        ``return_intermediates = r`` keeps about r latents on the way (every ⌊t_enc/r⌋-th and the last two).
        Returns ``(x_enc, {"x_encoded", "intermediate_steps"[, "intermediates"]})``.
        """
        alphas, alphas_prev, _, _ = self._step_tables(use_original_steps)
        timesteps = np.arange(self.ddpm_num_timesteps) if use_original_steps else self.ddim_timesteps
        steps = len(timesteps)
        if not 0 <= t_enc <= steps:
            raise ValueError(f"t_enc = {t_enc} is outside the schedule's {steps} steps; use 0..{steps}.")
        options = StepOptions(
            use_original_steps=use_original_steps, unconditional_guidance_scale=unconditional_guidance_scale,
            unconditional_conditioning=unconditional_conditioning,
        )  # fmt: skip
        every = max(1, t_enc // return_intermediates) if return_intermediates else 0
        x, kept, kept_steps = x0, [], []
        for i in progress(range(t_enc), "Encoding Image", t_enc, False):
            t = torch.full((x0.shape[0],), int(timesteps[i]), device=x0.device, dtype=torch.long)
            eps = self._denoise(x, c, t, self._marginal(x, i, use_original_steps), options).eps
            a_to, a_from = batch_coefficient(alphas[i], x), batch_coefficient(alphas_prev[i], x)
            x = (a_to / a_from).sqrt() * x + a_to.sqrt() * ((1 / a_to - 1).sqrt() - (1 / a_from - 1).sqrt()) * eps
            if every and ((i % every == 0 and i < t_enc - 1) or i >= t_enc - 2):
                kept.append(x)
                kept_steps.append(i)
            if callback:
                callback(i)
        out: dict[str, Any] = {"x_encoded": x, "intermediate_steps": kept_steps}
        if return_intermediates:
            out["intermediates"] = kept
        return x, out

    @torch.no_grad()
    def decode(
        self,
        x_latent: torch.Tensor,
        cond: Conditioning,
        t_start: int,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Conditioning = None,
        use_original_steps: bool = False,
        callback: Callable[[int], None] | None = None,
        disable_progress: bool = False,
        guidance_rescale: float = 0.0,
    ) -> torch.Tensor:
        """Deterministic (η of :meth:`make_schedule`) DDIM denoising of ``x_latent`` ``(B, ...)`` from schedule
        position ``t_start`` (the latent of ``stochastic_encode(x0, t_start - 1)`` or of :meth:`encode`) down to
        x_0; ``callback(i)`` after each step; ``guidance_rescale`` φ as in ``sample``."""
        visited = np.arange(self.ddpm_num_timesteps) if use_original_steps else self.ddim_timesteps

        options = StepOptions(
            use_original_steps=use_original_steps, unconditional_guidance_scale=unconditional_guidance_scale,
            unconditional_conditioning=unconditional_conditioning, guidance_rescale=guidance_rescale,
        )  # fmt: skip
        step = self._guided_step(cond, lambda index: unconditional_guidance_scale, options)
        time_range = np.flip(visited[:t_start])
        loop = LoopOptions(x_T=x_latent, callback=callback, disable_progress=disable_progress)
        return self._sample_loop(step, x_latent.shape, "Decoding image", time_range, loop)[0]


def _reject_dynamic_threshold(dynamic_threshold: float | None) -> None:
    if dynamic_threshold is not None:
        raise NotImplementedError("dynamic_threshold is not implemented for DDIM sampling; leave it None.")
