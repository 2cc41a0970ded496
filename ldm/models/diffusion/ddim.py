"""DDIM sampling (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12), with classifier-free guidance.

``DDIMSampler(model).sample(S, batch_size, shape, conditioning, ...)`` walks S of the model's timesteps
(``[1, 1 + T/S, ...]``) from x_T ~ N(0, I); η = 0 is the deterministic sampler, η = 1 the DDPM-like one.
``stochastic_encode`` + ``decode`` are the img2img pair: noise x_0 to a DDIM step, then denoise from it.
Works for eps, x0 and v models (the update uses the model's (x̂_0, ε̂)).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ldm.models.diffusion.sampler_core import Conditioning, checked_keywords, warn_on_batch_mismatch
from ldm.models.diffusion.sampling_common import DDIMScheduleSampler

logger = logging.getLogger(__name__)


class DDIMSampler(DDIMScheduleSampler):
    """DDIM sampler over a model's discrete schedule (see :class:`DDIMScheduleSampler` for the buffers)."""

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
        dynamic_threshold: float | None = None,
        ucg_schedule: Sequence[float] | None = None,
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Sample ``(batch_size, *shape)`` latents in S DDIM steps.

        ``unconditional_conditioning`` has the conditioning's form (tensor, list or dict); ``ucg_schedule``
        gives one guidance scale per step instead of ``unconditional_guidance_scale``. ``normals_sequence`` is
        accepted and unused; ``dynamic_threshold`` must stay None. ``generator`` drives x_T and the per-step noise.
        A keyword not listed here raises ``TypeError``. Returns ``(samples, {"x_inter": [...], "pred_x0": [...]})``.
        """
        warn_on_batch_mismatch(conditioning, batch_size)
        self.make_schedule(ddim_num_steps=S, ddim_eta=eta, verbose=verbose)
        size = (batch_size, *shape)
        logger.info("Data shape for DDIM sampling is %s, eta %s", size, eta)
        return self.ddim_sampling(
            conditioning,
            size,
            callback=callback,
            img_callback=img_callback,
            quantize_denoised=quantize_x0,
            mask=mask,
            x0=x0,
            ddim_use_original_steps=False,
            noise_dropout=noise_dropout,
            temperature=temperature,
            score_corrector=score_corrector,
            corrector_kwargs=corrector_kwargs,
            x_T=x_T,
            log_every_t=log_every_t,
            unconditional_guidance_scale=unconditional_guidance_scale,
            unconditional_conditioning=unconditional_conditioning,
            generator=generator,
            disable_progress=disable_progress,
            dynamic_threshold=dynamic_threshold,
            ucg_schedule=ucg_schedule,
        )

    @torch.no_grad()
    def ddim_sampling(
        self,
        cond: Conditioning,
        shape: tuple[int, ...],
        x_T: torch.Tensor | None = None,
        ddim_use_original_steps: bool = False,
        callback: Callable[[int], None] | None = None,
        timesteps: int | np.ndarray | None = None,
        quantize_denoised: bool = False,
        mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        img_callback: Callable[[torch.Tensor, int], None] | None = None,
        log_every_t: int = 100,
        temperature: float = 1.0,
        noise_dropout: float = 0.0,
        score_corrector: Any = None,
        corrector_kwargs: dict | None = None,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Conditioning = None,
        generator: torch.Generator | None = None,
        disable_progress: bool = False,
        dynamic_threshold: float | None = None,
        ucg_schedule: Sequence[float] | None = None,
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """The DDIM loop over ``shape`` = ``(B, ...)``; needs :meth:`make_schedule` first."""
        steps = len(self._time_range(timesteps, ddim_use_original_steps))
        if ucg_schedule is not None and len(ucg_schedule) != steps:
            raise ValueError(
                f"ucg_schedule has {len(ucg_schedule)} guidance scales for {steps} steps; give one per step."
            )

        def step(img: torch.Tensor, ts: torch.Tensor, index: int, ts_next: torch.Tensor):
            scale = unconditional_guidance_scale if ucg_schedule is None else ucg_schedule[steps - 1 - index]
            return self.p_sample_ddim(
                img,
                cond,
                ts,
                index=index,
                use_original_steps=ddim_use_original_steps,
                quantize_denoised=quantize_denoised,
                temperature=temperature,
                noise_dropout=noise_dropout,
                score_corrector=score_corrector,
                corrector_kwargs=corrector_kwargs,
                unconditional_guidance_scale=scale,
                unconditional_conditioning=unconditional_conditioning,
                generator=generator,
                dynamic_threshold=dynamic_threshold,
            )

        return self._sample_loop(
            step,
            shape,
            "DDIM Sampler",
            self._time_range(timesteps, ddim_use_original_steps),
            x_T=x_T,
            callback=callback,
            mask=mask,
            x0=x0,
            img_callback=img_callback,
            log_every_t=log_every_t,
            generator=generator,
            disable_progress=disable_progress,
        )

    @torch.no_grad()
    def p_sample_ddim(
        self,
        x: torch.Tensor,
        c: Conditioning,
        t: torch.Tensor,
        index: int,
        repeat_noise: bool = False,
        use_original_steps: bool = False,
        quantize_denoised: bool = False,
        temperature: float = 1.0,
        noise_dropout: float = 0.0,
        score_corrector: Any = None,
        corrector_kwargs: dict | None = None,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Conditioning = None,
        generator: torch.Generator | None = None,
        dynamic_threshold: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One guided DDIM step from x_t ``(B, ...)`` at DDPM times ``t`` ``(B,)``, schedule position ``index``.

        Returns ``(x_prev, pred_x0)``.
        """
        if dynamic_threshold is not None:
            raise NotImplementedError("dynamic_threshold is not implemented for DDIM sampling; leave it None.")
        prediction = self._denoise(
            x, c, t, self._marginal(x, index, use_original_steps), unconditional_conditioning,
            unconditional_guidance_scale, score_corrector, corrector_kwargs,
        )  # fmt: skip
        return self._ddim_update(
            x,
            prediction,
            index,
            use_original_steps=use_original_steps,
            quantize_denoised=quantize_denoised,
            temperature=temperature,
            noise_dropout=noise_dropout,
            repeat_noise=repeat_noise,
            generator=generator,
        )

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
    def decode(
        self,
        x_latent: torch.Tensor,
        cond: Conditioning,
        t_start: int,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Conditioning = None,
        use_original_steps: bool = False,
        disable_progress: bool = False,
    ) -> torch.Tensor:
        """Deterministic (η of :meth:`make_schedule`) DDIM denoising of ``x_latent`` ``(B, ...)`` from schedule
        position ``t_start`` (the latent of ``stochastic_encode(x0, t_start - 1)``) down to x_0."""
        visited = np.arange(self.ddpm_num_timesteps) if use_original_steps else self.ddim_timesteps

        def step(img: torch.Tensor, ts: torch.Tensor, index: int, ts_next: torch.Tensor):
            return self.p_sample_ddim(
                img, cond, ts, index=index, use_original_steps=use_original_steps,
                unconditional_guidance_scale=unconditional_guidance_scale,
                unconditional_conditioning=unconditional_conditioning,
            )  # fmt: skip

        time_range = np.flip(visited[:t_start])
        return self._sample_loop(step, x_latent.shape, "Decoding image", time_range, x_T=x_latent,
                                 disable_progress=disable_progress)[0]  # fmt: skip
