"""The DDIM sub-schedule, update and loop shared by ``DDIMSampler`` and ``PLMSSampler``.

Both walk S of the model's timesteps t_S > ... > t_1 (Song et al. 2021, "Denoising Diffusion Implicit Models")
and differ only in the ε they feed to the DDIM update (eq. 12 of the paper):

(1) x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t,
(2) x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ_t²) ε + σ_t z,  z ~ N(0, I),
(3) σ_t = η √((1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)).

Model outputs become (x̂_0, ε̂) in :func:`~ldm.models.diffusion.sampler_core.denoise`; the per-step constants come
from the model's :class:`~ldm.models.diffusion.schedule.DiscreteSchedule`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from ldm.models.diffusion.prediction import Parameterization, Prediction, split_prediction
from ldm.models.diffusion.sampler_core import (
    Conditioning,
    DiffusionModel,
    batch_coefficient,
    checked_keywords,
    denoise,
    progress,
    unexpected_keyword_error,
)
from ldm.models.diffusion.sampler_frontend import SamplerFrontEnd
from ldm.models.diffusion.schedule import DiscreteSchedule, ddim_sigma, sampler_timesteps
from ldm.modules.diffusionmodules.util import make_ddim_sampling_parameters, noise_like
from ldm.util import SettingError

logger = logging.getLogger(__name__)

#: ``step(x, ts, index, ts_next) -> (x_prev, pred_x0)``: one sampler step on a ``(B, ...)`` batch.
Step = Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_Options = TypeVar("_Options", bound="StepOptions")


@dataclass(frozen=True)
class StepOptions:
    """The keyword options of one DDIM-family step (``p_sample_ddim``, ``p_sample_plms``), with the original names
    and defaults: the schedule (``use_original_steps``), the update's noise and x̂_0 refinements, and guidance."""

    repeat_noise: bool = False
    use_original_steps: bool = False
    quantize_denoised: bool = False
    temperature: float = 1.0
    noise_dropout: float = 0.0
    score_corrector: Any = None
    corrector_kwargs: dict | None = None
    unconditional_guidance_scale: float = 1.0
    unconditional_conditioning: Conditioning = None
    generator: torch.Generator | None = None
    guidance_rescale: float = 0.0

    #: Fields that callers of this class may not pass (a loop sets them itself).
    internal: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls: type[_Options], where: str, options: dict[str, Any], excluded: tuple[str, ...] = ()) -> _Options:
        """The options given by keyword to ``where``; an unknown one (or one in ``excluded``) raises the
        ``TypeError`` of :func:`unexpected_keyword_error`."""
        hidden = (*cls.internal, *excluded)
        valid = [f.name for f in fields(cls) if f.name not in hidden]
        for name in options:
            if name not in valid:
                raise unexpected_keyword_error(where, name, valid)
        return cls(**options)


@dataclass(frozen=True)
class LoopOptions(StepOptions):
    """The keyword options of the DDIM-family loops (``ddim_sampling``, ``plms_sampling``, with the original
    names and defaults): a step's options and the loop's own; ``dynamic_threshold`` and ``ucg_schedule`` are
    DDIM's alone."""

    x_T: torch.Tensor | None = None
    ddim_use_original_steps: bool = False
    callback: Callable[[int], None] | None = None
    timesteps: int | np.ndarray | None = None
    mask: torch.Tensor | None = None
    x0: torch.Tensor | None = None
    img_callback: Callable[[torch.Tensor, int], None] | None = None
    log_every_t: int = 100
    disable_progress: bool = False
    dynamic_threshold: float | None = None
    ucg_schedule: Sequence[float] | None = None

    internal: ClassVar[tuple[str, ...]] = ("repeat_noise", "use_original_steps")

    def step_options(self) -> StepOptions:
        """The options of each step of this loop (``use_original_steps`` is ``ddim_use_original_steps``)."""
        shared = {f.name: getattr(self, f.name) for f in fields(StepOptions)}
        return StepOptions(**{**shared, "use_original_steps": self.ddim_use_original_steps})


#: A step with every option at its default.
DEFAULT_STEP = StepOptions()

# --------------------------------------------------------------------------------------------------------
# The DDIM schedule, update and loop shared by DDIM and PLMS
# --------------------------------------------------------------------------------------------------------


class DDIMScheduleSampler(SamplerFrontEnd):
    """Holds a model's DDIM sub-schedule and runs eq. (2) from an ε.

    Tensors stored with :meth:`register_buffer` live on ``device`` (default: the model's, ``model.betas.device``).
    """

    @checked_keywords
    def __init__(self, model: DiffusionModel, schedule: str = "linear", device: torch.device | str | None = None):
        super().__init__(model, device=device)
        self.ddpm_num_timesteps = model.num_timesteps
        self.schedule = schedule

    def make_schedule(
        self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0, verbose: bool = True
    ) -> None:
        """Compute ``ddim_timesteps`` (int64 numpy), ``ddim_alphas`` (float32), ``ddim_alphas_prev`` (float64
        numpy), ``ddim_sigmas`` (float64, eq. 3), ``ddim_sqrt_one_minus_alphas`` (float32), the model's float32
        schedule tables and ``ddim_sigmas_for_original_num_steps`` (eq. 3 at every DDPM step).

        ``ddim_discretize`` spaces the S steps: the original ``"uniform"`` ([1, 1 + T/S, ...]) or ``"quad"``, or
        ``"trailing"`` (round(T − k·T/S) − 1, starting at t = T − 1; for zero-terminal-SNR models), see
        :func:`~ldm.models.diffusion.schedule.sampler_timesteps`."""
        self.ddim_timesteps = sampler_timesteps(ddim_discretize, ddim_num_steps, self.ddpm_num_timesteps, verbose)
        self.discrete_schedule = DiscreteSchedule.from_model(self.model)
        self.register_buffer("betas", self.model.betas.detach().to(torch.float32).clone())
        self.register_buffer("alphas_cumprod_prev", self.model.alphas_cumprod_prev.detach().to(torch.float32).clone())
        for name, table in self.discrete_schedule.sampler_tables().items():
            self.register_buffer(name, table)

        sigmas, alphas, alphas_prev = make_ddim_sampling_parameters(
            alphacums=self.discrete_schedule.alphas_cumprod32, ddim_timesteps=self.ddim_timesteps, eta=ddim_eta,
            verbose=verbose,
        )  # fmt: skip
        self.register_buffer("ddim_sigmas", sigmas)
        self.register_buffer("ddim_alphas", alphas)
        self.register_buffer("ddim_alphas_prev", alphas_prev)
        self.register_buffer("ddim_sqrt_one_minus_alphas", torch.from_numpy(np.sqrt((1.0 - alphas).numpy())))
        self.register_buffer(
            "ddim_sigmas_for_original_num_steps",
            ddim_sigma(self.alphas_cumprod, self.alphas_cumprod_prev, ddim_eta),
        )

    def _step_tables(self, use_original_steps: bool) -> tuple[Any, Any, Any, Any]:
        """``(ᾱ_t, ᾱ_prev, √(1 − ᾱ_t), σ_t)`` indexed by step: all DDPM steps or the DDIM sub-sequence."""
        if use_original_steps:
            return (
                self.alphas_cumprod,
                self.alphas_cumprod_prev,
                self.sqrt_one_minus_alphas_cumprod,
                self.ddim_sigmas_for_original_num_steps,
            )
        return self.ddim_alphas, self.ddim_alphas_prev, self.ddim_sqrt_one_minus_alphas, self.ddim_sigmas

    def _marginal(self, x: torch.Tensor, index: int, use_original_steps: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ_t, √(1 − ᾱ_t)) of schedule position ``index`` as float32 ``(B, 1, ..., 1)`` tensors."""
        alphas, _, sqrt_one_minus_alphas, _ = self._step_tables(use_original_steps)
        return batch_coefficient(alphas[index], x).sqrt(), batch_coefficient(sqrt_one_minus_alphas[index], x)

    def _marginal_at(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ_t, √(1 − ᾱ_t)) at DDPM timesteps ``t`` ``(B,)``, shaped ``(B, 1, ..., 1)``."""
        view = (x.shape[0],) + (1,) * (x.ndim - 1)
        return self.sqrt_alphas_cumprod[t].view(view), self.sqrt_one_minus_alphas_cumprod[t].view(view)

    def _denoise(
        self, x: torch.Tensor, c: Conditioning, t: torch.Tensor, marginal: tuple[torch.Tensor, torch.Tensor],
        options: StepOptions,
    ) -> Prediction:
        """The guided (x̂_0, ε̂) of the model at x_t ``(B, ...)``, t ``(B,)`` with (√ᾱ_t, √(1 − ᾱ_t)) ``marginal``,
        guidance and score corrector from ``options``."""
        return denoise(
            self.model, x, t, c, *marginal, options.unconditional_conditioning, options.unconditional_guidance_scale,
            options.score_corrector, options.corrector_kwargs, options.guidance_rescale,
        )  # fmt: skip

    def _ddim_update(
        self, x: torch.Tensor, prediction: Prediction | torch.Tensor, index: int, options: StepOptions = DEFAULT_STEP
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (2) from ``x`` = x_t ``(B, ...)`` at schedule position ``index``; returns ``(x_prev, x̂_0)``.

        ``prediction`` is the model's (x̂_0, ε̂), or an ε alone (PLMS's combined ε), whose x̂_0 is eq. (1).
        Coefficients are float32 ``(B, 1, ..., 1)`` tensors; z is drawn even when σ_t = 0. ``options``: the
        schedule (``use_original_steps``), ``quantize_denoised``, ``temperature`` (scales σ_t z), ``noise_dropout``
        (drops entries of it), ``repeat_noise`` and the ``generator`` of z.
        """
        _, alphas_prev, _, sigmas = self._step_tables(options.use_original_steps)
        if isinstance(prediction, torch.Tensor):
            marginal = self._marginal(x, index, options.use_original_steps)
            prediction = split_prediction(Parameterization.EPS, x, prediction, *marginal)
        pred_x0, eps = prediction
        if options.quantize_denoised:
            pred_x0, _, *_ = self.model.first_stage_model.quantize(pred_x0)
        a_prev, sigma_t = batch_coefficient(alphas_prev[index], x), batch_coefficient(sigmas[index], x)
        z = noise_like(x.shape, x.device, options.repeat_noise, generator=options.generator)
        noise = sigma_t * z * options.temperature
        if options.noise_dropout > 0.0:
            noise = F.dropout(noise, p=options.noise_dropout)
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev - sigma_t**2).sqrt() * eps + noise, pred_x0

    def _time_range(self, timesteps: int | np.ndarray | None, use_original_steps: bool) -> np.ndarray:
        """The DDPM timesteps to visit, descending. An int ``timesteps`` keeps the first ``timesteps`` DDIM
        steps minus one or, with ``use_original_steps``, DDPM steps ``< timesteps``."""
        if use_original_steps:
            count = self.ddpm_num_timesteps if timesteps is None else int(timesteps)
            return np.arange(count)[::-1]
        if timesteps is None:
            return np.flip(self.ddim_timesteps)
        n = self.ddim_timesteps.shape[0]
        subset_end = int(min(timesteps / n, 1) * n) - 1
        return np.flip(self.ddim_timesteps[:subset_end])

    def _sample_loop(
        self, step: Step, shape: tuple[int, ...], desc: str, time_range: np.ndarray, options: LoopOptions
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Run ``step`` over the descending DDPM timesteps ``time_range`` from ``options.x_T`` ``(B, ...)``
        (default: N(0, I) from ``options.generator``).

        With ``options.mask`` (1 = keep), the kept region is replaced by ``q_sample(x0, t)`` before each step.
        Intermediates ``x_inter``/``pred_x0`` start with x_T and log every ``log_every_t`` indices and the
        first step; ``callback(i)`` and ``img_callback(x̂_0, i)`` run after each. Returns ``(x_0, intermediates)``.
        """
        mask, x0, x_T, log_every_t = options.mask, options.x0, options.x_T, options.log_every_t
        if mask is not None and x0 is None:
            raise SettingError("sampling with a mask needs x0, the latent whose masked region is kept.")
        img = x_T if x_T is not None else torch.randn(shape, device=self.device, generator=options.generator)
        total_steps = len(time_range)
        logger.info("Running %s with %d timesteps", desc, total_steps)
        intermediates = {"x_inter": [img], "pred_x0": [img]}
        b = shape[0]
        for i, step_t in enumerate(progress(time_range, desc, total_steps, options.disable_progress)):
            index = total_steps - i - 1
            ts = torch.full((b,), int(step_t), device=self.device, dtype=torch.long)
            ts_next = torch.full(
                (b,), int(time_range[min(i + 1, total_steps - 1)]), device=self.device, dtype=torch.long
            )
            if mask is not None:
                img = self.model.q_sample(x0, ts) * mask + (1.0 - mask) * img
            img, pred_x0 = step(img, ts, index, ts_next)
            if options.callback:
                options.callback(i)
            if options.img_callback:
                options.img_callback(pred_x0, i)
            if index % log_every_t == 0 or index == total_steps - 1:
                intermediates["x_inter"].append(img)
                intermediates["pred_x0"].append(pred_x0)
        return img, intermediates
