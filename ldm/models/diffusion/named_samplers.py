"""Samplers by the names AUTOMATIC1111's web UI and ComfyUI made standard, behind the DDIM sampler's call.

    sampler = NamedSampler(model, "DPM++ 2M Karras")
    samples, _ = sampler.sample(S=20, batch_size=4, shape=(4, 64, 64), conditioning=c,
                                unconditional_guidance_scale=7.5, unconditional_conditioning=uc)
    edited = sampler.img2img(z_0, strength=0.6, S=20, conditioning=c, unconditional_guidance_scale=7.5,
                             unconditional_conditioning=uc)

The names, aliases and schedules live in :mod:`ldm.models.diffusion.sampler_names` (:data:`SAMPLERS`,
:func:`sampler_choice`), re-exported here.

The k-diffusion samplers integrate z = x_0 + σ ε (the variance-exploding view of x_t = z / √(1 + σ²)) over the
decreasing list σ_0 > ... > σ_{S−1} > σ_S = 0 of a schedule (:data:`SCHEDULES`):

(1) txt2img starts at z = σ_0 x_T, x_T ~ N(0, I) the draw DDIM would start from (AUTOMATIC1111's convention);
(2) img2img at strength s keeps the last k = ⌊s S⌋ steps: z = x_0 + σ_{S−k} ε, then σ_{S−k} > ... > 0;
    s = 0 returns x_0 untouched, s = 1 starts at σ_0 = σ_max.

DDIM, PLMS and DPM-Solver++ run through their own classes; their img2img noises x_0 to the DDIM step of index
min(k, S − 1) (``stochastic_encode``, as the original img2img script does) and takes k steps from index k − 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.models.diffusion.dpm_solver.solver import sample_dpmpp_2m, time_steps
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.sampler_core import (
    Conditioning,
    DiffusionModel,
    checked_keywords,
    declared_keywords,
    unexpected_keyword_error,
)
from ldm.models.diffusion.sampler_frontend import SampleResult, SamplerFrontEnd, SamplingRequest, StepRecorder
from ldm.models.diffusion.sampler_names import (
    K_SAMPLERS,
    SAMPLERS,
    SCHEDULE_ALIASES,
    SCHEDULES,
    UNI_PC,
    Family,
    SamplerEntry,
    describe_samplers,
    resolve_sampler,
    sampler_choice,
    schedule_name,
)

__all__ = [
    "K_SAMPLERS", "SAMPLERS", "SCHEDULES", "SCHEDULE_ALIASES", "UNI_PC", "Family", "NamedSampler", "SamplerEntry",
    "describe_samplers", "resolve_sampler", "sampler_choice", "schedule_name",
]  # fmt: skip

_LEGACY_CLASSES = {"DDIMSampler": DDIMSampler, "PLMSSampler": PLMSSampler, "DPMSolverSampler": DPMSolverSampler}


def _seed_from(generator: torch.Generator | None) -> int:
    """A 63-bit seed drawn from ``generator`` (the global RNG when None)."""
    device = None if generator is None else generator.device
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device))


def _variance_preserving(z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x_t = z / √(1 + σ²) for z ``(B, ...)`` at σ (a number, a 0-d or a ``(B,)`` tensor)."""
    sigma = torch.as_tensor(sigma, dtype=z.dtype, device=z.device)
    sigma = sigma.reshape(sigma.shape + (1,) * (z.ndim - sigma.ndim)) if sigma.ndim else sigma
    return z * torch.rsqrt(1 + sigma**2)


def _guidance_request(steps: int, size: tuple[int, ...], conditioning: Conditioning, scale: float,
                      unconditional: Conditioning, rescale: float, generator: torch.Generator | None,
                      disable_progress: bool) -> SamplingRequest:
    """A :class:`SamplingRequest` carrying guidance and the generator (every other option at its neutral value)."""
    return SamplingRequest(
        steps=steps, size=size, conditioning=conditioning, callback=None, img_callback=None, quantize_x0=False,
        eta=0.0, mask=None, x0=None, temperature=1.0, noise_dropout=0.0, score_corrector=None, corrector_kwargs=None,
        verbose=False, x_T=None, log_every_t=100, unconditional_guidance_scale=scale,
        unconditional_conditioning=unconditional, generator=generator, disable_progress=disable_progress,
        guidance_rescale=rescale,
    )  # fmt: skip


class NamedSampler(SamplerFrontEnd):
    """The sampler called ``name`` (see :func:`resolve_sampler`) over ``model``, with the DDIM sampler's ``sample``.

    ``schedule`` (or a suffix of ``name``) picks the noise levels of the k-diffusion samplers; DDIM, PLMS,
    DPM-Solver++, DPM fast and DPM adaptive space their steps themselves and take "normal" only.
    """

    @checked_keywords
    def __init__(self, model: DiffusionModel, name: str, schedule: str | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__(model, device=device)
        self.entry, self.schedule = sampler_choice(name, schedule)
        legacy = _LEGACY_CLASSES.get(self.entry.function) if self.entry.family is Family.LEGACY else None
        self.legacy = None if legacy is None else legacy(model, device=device)

    #: ``eta`` None reaches :meth:`run` as None: the sampler function's own default.
    default_eta: ClassVar[float | None] = None
    sample_options: ClassVar[dict[str, Any]] = {
        "schedule": None, "s_noise": 1.0, "noise_sampler": None, "sampler_options": None,
    }  # fmt: skip

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.entry.name!r}, schedule={self.schedule or 'normal'!r})"

    # -- the two entry points: sample (the front-end's, calling run) and img2img -------------------------------

    def run(
        self, request: SamplingRequest, schedule: str | None, s_noise: float,
        noise_sampler: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
        sampler_options: dict[str, Any] | None,
    ) -> SampleResult:
        """``sample`` (the DDIM sampler's arguments, meaning what they mean there) for this sampler.

        ``eta`` None takes the sampler's own default (0 for DDIM and the DPM-Solvers, 1 for the ancestral and SDE
        samplers); a non-zero η for a deterministic sampler raises ``ValueError``. ``schedule`` must agree with the
        name's suffix; ``s_noise`` scales the added noise; ``noise_sampler(σ, σ_next)`` replaces the generator's
        noise; ``sampler_options`` go to the sampler function (``order=3`` for UniPC, ``s_churn`` for Euler,
        ``skip_type`` for DPM-Solver++, ...). The DDIM-loop options (mask/x0, quantize_x0, temperature,
        noise_dropout, score_corrector) work with DDIM only. The k-diffusion samplers log ``x_inter`` as
        x_t = z / √(1 + σ²) and ``pred_x0`` as their denoised x̂_0.
        """
        schedule = self._schedule(schedule)
        options = dict(sampler_options or {})
        if self.legacy is not None:
            self._reject_k_options(s_noise, noise_sampler)
            legacy_request = dataclasses.replace(request, eta=0.0 if request.eta is None else request.eta)
            return self.legacy.run(legacy_request, **self.legacy.sampler_keywords(options))
        request.reject_ddim_only_options(f"{self.entry.name} (a k-diffusion sampler)", allowed=("eta",))
        denoiser = self._denoiser()
        sigmas = self.sigmas(request.steps, schedule, denoiser)
        x_T = request.initial_noise(self.device)
        intermediates, on_step = request.recorder(x_T)
        samples = self._integrate(
            denoiser, x_T * sigmas[0], sigmas, request, request.eta, s_noise, noise_sampler, options, on_step
        )
        return samples, intermediates

    @torch.no_grad()
    @checked_keywords
    def img2img(
        self,
        x0_latent: torch.Tensor,
        strength: float,
        S: int,
        conditioning: Conditioning = None,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Conditioning = None,
        eta: float | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        schedule: str | None = None,
        s_noise: float = 1.0,
        noise_sampler: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        disable_progress: bool = False,
        guidance_rescale: float = 0.0,
        sampler_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """SDEdit: noise the latent ``x0_latent`` ``(B, ...)`` to the start of the last k = ⌊strength · S⌋ steps of
        the S-step schedule and sample back from there (eq. 2 of the module docstring); returns ``(B, ...)``.

        ``noise`` ε defaults to N(0, I) from ``generator``; strength 0 returns ``x0_latent`` itself. The other
        arguments mean what they mean in :meth:`sample`.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength {strength} is outside [0, 1] (the fraction of the schedule to run again)")
        if S < 1:
            raise ValueError(f"img2img needs at least one step of schedule, got S={S}")
        steps = int(strength * S)
        if steps == 0:
            return x0_latent
        if noise is None:
            noise = torch.randn(x0_latent.shape, generator=generator, device=x0_latent.device, dtype=x0_latent.dtype)
        schedule = self._schedule(schedule)
        options = dict(sampler_options or {})
        request = _guidance_request(S, tuple(x0_latent.shape), conditioning, unconditional_guidance_scale,
                                    unconditional_conditioning, guidance_rescale, generator, disable_progress)
        if self.legacy is not None:
            self._reject_k_options(s_noise, noise_sampler)
            return self._legacy_img2img(x0_latent, noise, steps, request, 0.0 if eta is None else eta, options)
        denoiser = self._denoiser()
        sigmas = self.sigmas(S, schedule, denoiser)[S - steps:]
        z = x0_latent + sigmas[0] * noise
        return self._integrate(denoiser, z, sigmas, request, eta, s_noise, noise_sampler, options, None)

    # -- the noise levels ---------------------------------------------------------------------------------------

    def sigmas(self, S: int, schedule: str | None = None, denoiser: Any = None) -> torch.Tensor:
        """The S + 1 noise levels σ_0 > ... > σ_S = 0 this sampler walks in S steps (float32, on :attr:`device`);
        with ``discard_penultimate_sigma`` the levels of S + 1 steps without their smallest non-zero one."""
        if S < 1:
            raise ValueError(f"sampling needs at least one step, got S={S}")
        from ldm.models.diffusion.k_samplers import schedule_sigmas

        denoiser = self._denoiser() if denoiser is None else denoiser
        discard = self.entry.discard_penultimate_sigma
        levels = schedule_sigmas(self._schedule(schedule), S + 1 if discard else S, denoiser)
        if discard:
            levels = torch.cat([levels[:-2], levels[-1:]])
        return levels.to(self.device, torch.float32)

    def _schedule(self, schedule: str | None) -> str:
        """The schedule of a call: ``schedule`` (if given, it must agree with the name's suffix), else the name's,
        else "normal"; the samplers that space their own steps take "normal" only."""
        if schedule is None:
            return self.schedule or "normal"
        chosen = sampler_choice(self.entry.name, schedule)[1]
        if self.schedule is not None and chosen != self.schedule:
            raise ValueError(f"sampler {self.entry.name!r} was built with the {self.schedule!r} schedule; "
                             f"schedule={schedule!r} disagrees")
        return chosen or "normal"

    # -- the k-diffusion path -----------------------------------------------------------------------------------

    def _denoiser(self) -> Any:
        """The model as a denoiser D(z, σ) at fractional model times (k-diffusion's default, no quantized t)."""
        from ldm.models.diffusion.k_samplers import CompVisDenoiser

        return CompVisDenoiser(self.model)

    def _integrate(
        self, denoiser: Any, z: torch.Tensor, sigmas: torch.Tensor, request: SamplingRequest, eta: float | None,
        s_noise: float, noise_sampler: Any, options: dict[str, Any], on_step: StepRecorder | None,
    ) -> torch.Tensor:
        """Run the sampler function from z ``(B, ...)`` at σ_0 down ``sigmas`` with ``request``'s guidance."""
        function = self.entry.load()
        accepted = declared_keywords(function)
        for name in options:
            if name not in accepted:
                raise unexpected_keyword_error(function.__name__, name, accepted)
        keywords = {**self.entry.options, **options}
        self._noise_keywords(keywords, accepted, z, sigmas, eta, s_noise, noise_sampler, request.generator)
        extra_args = self._extra_args(denoiser, request)

        def report(info: dict[str, Any]) -> None:
            if on_step is not None:
                on_step(info["i"], _variance_preserving(info["x"], info["sigma_hat"]), info["denoised"])

        common = {"extra_args": extra_args, "callback": report, "disable": request.disable_progress}
        if self.entry.family is Family.DPM_SOLVER:
            keywords.update(sigma_min=float(sigmas[-2]), sigma_max=float(sigmas[0]))
            if "n" in accepted:
                keywords["n"] = len(sigmas) - 1
            return function(denoiser, z, **common, **keywords)
        return function(denoiser, z, sigmas, **common, **keywords)

    def _noise_keywords(
        self, keywords: dict[str, Any], accepted: list[str], z: torch.Tensor, sigmas: torch.Tensor,
        eta: float | None, s_noise: float, noise_sampler: Any, generator: torch.Generator | None,
    ) -> None:
        """Add η, s_noise and the noise sampler to ``keywords`` where the function takes them; a deterministic
        sampler given noise settings raises ``ValueError``."""
        sampler_choice(self.entry.name, eta=eta)
        for name, is_set in (("s_noise", s_noise != 1.0), ("noise_sampler", noise_sampler is not None)):
            if is_set and name not in accepted:
                raise ValueError(f"{self.entry.name} is deterministic and takes no {name}; drop it or choose a "
                                 "sampler that adds noise ('Euler a', 'DPM++ 2M SDE')")
        if eta is not None and "eta" in accepted:
            keywords["eta"] = eta
        if "s_noise" in accepted:
            keywords["s_noise"] = s_noise
        noisy = self.entry.family in (Family.ANCESTRAL, Family.SDE) or eta not in (None, 0.0)
        if "noise_sampler" in accepted and (noisy or noise_sampler is not None):
            keywords["noise_sampler"] = noise_sampler or self._noise_sampler(z, sigmas, generator)

    def _noise_sampler(self, z: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None) -> Any:
        """Gaussian draws from ``generator``, or for the SDE samplers a Brownian tree seeded from it."""
        from ldm.models.diffusion import k_samplers

        if self.entry.family is Family.SDE:
            positive = sigmas[sigmas > 0]
            return k_samplers.BrownianTreeNoiseSampler(z, positive.min(), positive.max(), seed=_seed_from(generator))
        return k_samplers.default_noise_sampler(z, generator=generator)

    @staticmethod
    def _extra_args(denoiser: Any, request: SamplingRequest) -> dict[str, Any]:
        """The denoiser's guidance keywords; ``ValueError`` for a guidance rescale it cannot apply."""
        extra = {"cond": request.conditioning, "uncond": request.unconditional_conditioning,
                 "cond_scale": request.unconditional_guidance_scale}  # fmt: skip
        if request.guidance_rescale:
            if "guidance_rescale" not in declared_keywords(denoiser.forward):
                raise ValueError(f"{type(denoiser).__name__} does not apply guidance_rescale; leave it at 0")
            extra["guidance_rescale"] = request.guidance_rescale
        return extra

    # -- DDIM, PLMS and DPM-Solver++ ---------------------------------------------------------------------------

    def _reject_k_options(self, s_noise: float, noise_sampler: Any) -> None:
        if s_noise != 1.0 or noise_sampler is not None:
            raise ValueError(f"{self.entry.name} takes no s_noise or noise_sampler; those are for the k-diffusion "
                             "samplers ('Euler a', 'DPM++ SDE', ...)")

    def _legacy_img2img(self, x0: torch.Tensor, noise: torch.Tensor, steps: int, request: SamplingRequest,
                        eta: float, options: dict[str, Any]) -> torch.Tensor:
        """img2img through the DDIM-schedule classes (``stochastic_encode`` at index min(k, S − 1), then k steps;
        ``sampler_options={"timestep_spacing": ...}`` spaces the S steps as in ``sample``), or DPM-Solver++ over the
        last k of its S + 1 model times, from α_τ x_0 + σ_τ ε at the first of them."""
        total, guidance = request.steps, (request.unconditional_guidance_scale, request.unconditional_conditioning)
        if isinstance(self.legacy, DPMSolverSampler):
            schedule = self.legacy.discrete_schedule
            times = time_steps(schedule, total, options.pop("skip_type", "time_uniform"))[total - steps:]
            self._reject_unknown_options(options)
            z = float(schedule.alpha(times[0])) * x0 + float(schedule.sigma(times[0])) * noise
            return sample_dpmpp_2m(request.data_prediction(self.model, schedule), z, times, schedule,
                                   disable=request.disable_progress)
        spacing = options.pop("timestep_spacing", "uniform")
        self._reject_unknown_options(options)
        encoder = self.legacy if isinstance(self.legacy, DDIMSampler) else DDIMSampler(self.model, device=self.device)
        encoder.make_schedule(ddim_num_steps=total, ddim_discretize=spacing, ddim_eta=eta, verbose=False)
        index = torch.full((x0.shape[0],), min(steps, total - 1), device=x0.device, dtype=torch.long)
        z = encoder.stochastic_encode(x0, index, noise=noise)
        if isinstance(self.legacy, DDIMSampler):
            return self.legacy.decode(z, request.conditioning, steps, *guidance,
                                      disable_progress=request.disable_progress,
                                      guidance_rescale=request.guidance_rescale)
        self.legacy.make_schedule(ddim_num_steps=total, ddim_discretize=spacing, ddim_eta=eta, verbose=False)
        self.legacy.ddim_timesteps = self.legacy.ddim_timesteps[:steps]  # the k least noisy steps, as decode walks
        return self.legacy.plms_sampling(
            request.conditioning, tuple(z.shape), x_T=z, unconditional_guidance_scale=guidance[0],
            unconditional_conditioning=guidance[1], disable_progress=request.disable_progress,
            guidance_rescale=request.guidance_rescale,
        )[0]  # fmt: skip

    def _reject_unknown_options(self, options: dict[str, Any]) -> None:
        if options:
            raise ValueError(f"{self.entry.name} img2img takes no sampler_options {sorted(options)}")
