"""Ancestral (DDPM) sampling of a ``LatentDiffusion`` model: p(x_{t−1} | x_t, c), whole chains, inpainting.

The methods are mixed into ``LatentDiffusion``; they rely on its ``apply_model``, ``q_posterior``, ``q_sample``,
``_predict_x0`` and ``_noised_cond``. DDIM sampling lives in :mod:`ldm.models.diffusion.ddim`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from tqdm import tqdm

from ldm.models.diffusion.conditioning import take_batch
from ldm.modules.diffusionmodules.util import noise_like
from ldm.util import SettingError, default


class LatentSamplingMixin:
    """``p_mean_variance``, ``p_sample``, ``progressive_denoising``, ``p_sample_loop``, ``sample``, ``sample_log``."""

    def p_mean_variance(
        self,
        x: torch.Tensor,
        c: Any,
        t: torch.Tensor,
        clip_denoised: bool,
        return_codebook_ids: bool = False,
        quantize_denoised: bool = False,
        return_x0: bool = False,
        score_corrector: Any = None,
        corrector_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """(mean, β̃_t, log β̃_t) of p(x_{t−1} | x_t, c); + x̂_0 with ``return_x0``; + logits with ``return_codebook_ids``.

        x̂_0 comes from the network (clamped to [-1, 1] with ``clip_denoised``, snapped to the codebook with
        ``quantize_denoised``); ``score_corrector.modify_score`` may adjust ε̂ first.
        """
        model_out = self.apply_model(x, t, c, return_ids=return_codebook_ids)
        if score_corrector is not None:
            if self.parameterization != "eps":
                raise SettingError("score_corrector needs parameterization 'eps'.")
            model_out = score_corrector.modify_score(self, model_out, x, t, c, **(corrector_kwargs or {}))
        if return_codebook_ids:
            model_out, logits = model_out
        x_recon = self._predict_x0(x, t, model_out)
        if clip_denoised:
            x_recon.clamp_(-1.0, 1.0)
        if quantize_denoised:
            x_recon, _, _ = self.first_stage_model.quantize(x_recon)
        model_mean, posterior_variance, posterior_log_variance = self.q_posterior(x_start=x_recon, x_t=x, t=t)
        if return_codebook_ids:
            return model_mean, posterior_variance, posterior_log_variance, logits
        if return_x0:
            return model_mean, posterior_variance, posterior_log_variance, x_recon
        return model_mean, posterior_variance, posterior_log_variance

    @torch.no_grad()
    def p_sample(
        self,
        x: torch.Tensor,
        c: Any,
        t: torch.Tensor,
        clip_denoised: bool = False,
        repeat_noise: bool = False,
        return_codebook_ids: bool = False,
        quantize_denoised: bool = False,
        return_x0: bool = False,
        temperature: float = 1.0,
        noise_dropout: float = 0.0,
        score_corrector: Any = None,
        corrector_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x_{t−1} = μ + exp(½ log β̃_t) · temperature · z (no noise at t = 0); with ``return_x0`` also x̂_0.

        ``generator`` (new, optional) draws z.
        """
        if return_codebook_ids:
            raise DeprecationWarning("return_codebook_ids is no longer supported (the original raises this too).")
        outputs = self.p_mean_variance(
            x=x,
            c=c,
            t=t,
            clip_denoised=clip_denoised,
            quantize_denoised=quantize_denoised,
            return_x0=return_x0,
            score_corrector=score_corrector,
            corrector_kwargs=corrector_kwargs,
        )
        model_mean, _, model_log_variance = outputs[:3]
        noise = noise_like(x.shape, x.device, repeat_noise, generator=generator, dtype=x.dtype) * temperature
        if noise_dropout > 0.0:
            noise = torch.nn.functional.dropout(noise, p=noise_dropout)
        nonzero_mask = (1 - (t == 0).float()).reshape(x.shape[0], *((1,) * (x.ndim - 1)))
        x_prev = model_mean + nonzero_mask * (0.5 * model_log_variance).exp() * noise
        if return_x0:
            return x_prev, outputs[3]
        return x_prev

    def _keep_masked(
        self,
        img: torch.Tensor,
        x0: torch.Tensor,
        mask: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """mask · q_sample(x0, t) + (1 − mask) · img: the regions where mask = 1 follow the known latents."""
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self.q_sample(x0, t, noise=noise) * mask + (1.0 - mask) * img

    def _timestep_iterator(self, timesteps: int, verbose: bool, desc: str) -> Iterator[int]:
        steps = reversed(range(timesteps))
        return tqdm(steps, desc=desc, total=timesteps) if verbose else steps

    @torch.no_grad()
    def progressive_denoising(
        self,
        cond: Any,
        shape: Sequence[int],
        verbose: bool = True,
        callback: Callable[[int], None] | None = None,
        quantize_denoised: bool = False,
        img_callback: Callable[[torch.Tensor, int], None] | None = None,
        mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        temperature: float | Sequence[float] = 1.0,
        noise_dropout: float = 0.0,
        score_corrector: Any = None,
        corrector_kwargs: dict[str, Any] | None = None,
        batch_size: int | None = None,
        x_T: torch.Tensor | None = None,
        start_T: int | None = None,
        log_every_t: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Ancestral sampling that logs the predicted x̂_0 (not x_t) every ``log_every_t`` steps.

        ``shape`` is ``(C, H, W)`` when ``batch_size`` is given, else ``(B, C, H, W)``; ``generator`` (new,
        optional) draws x_T and all noise.
        """
        log_every_t = log_every_t or self.log_every_t
        timesteps = self.num_timesteps
        if batch_size is not None:
            b = batch_size
            shape = [batch_size, *shape]
        else:
            b = batch_size = shape[0]
        img = torch.randn(tuple(shape), device=self.device, generator=generator) if x_T is None else x_T
        intermediates = []
        cond = take_batch(cond, batch_size)
        if start_T is not None:
            timesteps = min(timesteps, start_T)
        if isinstance(temperature, float):
            temperature = [temperature] * timesteps

        for i in self._timestep_iterator(timesteps, verbose, "Progressive Generation"):
            ts = torch.full((b,), i, device=self.device, dtype=torch.long)
            if self.shorten_cond_schedule:
                cond = self._noised_cond(cond, ts)
            img, x0_partial = self.p_sample(
                img,
                cond,
                ts,
                clip_denoised=self.clip_denoised,
                quantize_denoised=quantize_denoised,
                return_x0=True,
                temperature=temperature[i],
                noise_dropout=noise_dropout,
                score_corrector=score_corrector,
                corrector_kwargs=corrector_kwargs,
                generator=generator,
            )
            if mask is not None:
                if x0 is None:
                    raise SettingError("progressive_denoising: a mask needs x0, the latents to keep.")
                img = self._keep_masked(img, x0, mask, ts, generator)
            if i % log_every_t == 0 or i == timesteps - 1:
                intermediates.append(x0_partial)
            if callback:
                callback(i)
            if img_callback:
                img_callback(img, i)
        return img, intermediates

    @torch.no_grad()
    def p_sample_loop(
        self,
        cond: Any,
        shape: Sequence[int],
        return_intermediates: bool = False,
        x_T: torch.Tensor | None = None,
        verbose: bool = True,
        callback: Callable[[int], None] | None = None,
        timesteps: int | None = None,
        quantize_denoised: bool = False,
        mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        img_callback: Callable[[torch.Tensor, int], None] | None = None,
        start_T: int | None = None,
        log_every_t: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Ancestral sampling x_T → x_0 ``(B, C, H, W)``.

        Where ``mask`` is 1 the latents are replaced by q_sample(x0, t) after every step (inpainting keeps
        those regions); ``img_callback(img, i)`` and ``callback(i)`` run after each step. ``generator`` (new,
        optional) draws x_T and all noise.
        """
        log_every_t = log_every_t or self.log_every_t
        device = self.betas.device
        b = shape[0]
        img = torch.randn(tuple(shape), device=device, generator=generator) if x_T is None else x_T
        intermediates = [img]
        timesteps = default(timesteps, self.num_timesteps)
        if start_T is not None:
            timesteps = min(timesteps, start_T)
        if mask is not None:
            if x0 is None:
                raise SettingError("p_sample_loop: a mask needs x0, the latents to keep.")
            if x0.shape[2:] != mask.shape[2:]:
                raise SettingError(f"p_sample_loop: mask {tuple(mask.shape)} and x0 {tuple(x0.shape)} differ in size.")

        for i in self._timestep_iterator(timesteps, verbose, "Sampling t"):
            ts = torch.full((b,), i, device=device, dtype=torch.long)
            if self.shorten_cond_schedule:
                cond = self._noised_cond(cond, ts)
            img = self.p_sample(
                img,
                cond,
                ts,
                clip_denoised=self.clip_denoised,
                quantize_denoised=quantize_denoised,
                generator=generator,
            )
            if mask is not None:
                img = self._keep_masked(img, x0, mask, ts, generator)
            if i % log_every_t == 0 or i == timesteps - 1:
                intermediates.append(img)
            if callback:
                callback(i)
            if img_callback:
                img_callback(img, i)
        if return_intermediates:
            return img, intermediates
        return img

    @torch.no_grad()
    def sample(
        self,
        cond: Any,
        batch_size: int = 16,
        return_intermediates: bool = False,
        x_T: torch.Tensor | None = None,
        verbose: bool = True,
        timesteps: int | None = None,
        quantize_denoised: bool = False,
        mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        shape: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`p_sample_loop` for ``batch_size`` samples of ``(channels, image_size, image_size)`` latents."""
        if shape is None:
            shape = (batch_size, self.channels, self.image_size, self.image_size)
        return self.p_sample_loop(
            take_batch(cond, batch_size),
            shape,
            return_intermediates=return_intermediates,
            x_T=x_T,
            verbose=verbose,
            timesteps=timesteps,
            quantize_denoised=quantize_denoised,
            mask=mask,
            x0=x0,
            generator=generator,
        )

    @torch.no_grad()
    def sample_log(self, cond: Any, batch_size: int, ddim: bool, ddim_steps: int, **kwargs) -> tuple[torch.Tensor, Any]:
        """Samples and intermediates by DDIM (``ddim``, ``ddim_steps`` steps) or by :meth:`sample`."""
        if ddim:
            from ldm.models.diffusion.ddim import DDIMSampler  # ddim.py may import this module

            shape = (self.channels, self.image_size, self.image_size)
            return DDIMSampler(self).sample(ddim_steps, batch_size, shape, cond, verbose=False, **kwargs)
        return self.sample(cond=cond, batch_size=batch_size, return_intermediates=True, **kwargs)
