"""What the samplers share: the guided model call, the DDIM schedule and update, the sampling loop.

``DDIMSampler`` and ``PLMSSampler`` both walk the DDIM sub-sequence of the model's timesteps and differ only in
how they turn model outputs into the ε used by the DDIM update; they subclass :class:`DDIMScheduleSampler` and
pass their step to :meth:`DDIMScheduleSampler._sample_loop`. ``DPMSolverSampler`` reuses the guided model call.

The model interface the samplers rely on: ``num_timesteps``, the float32 buffers ``betas``, ``alphas_cumprod``,
``alphas_cumprod_prev``, ``apply_model(x, t, cond) -> ε``, ``parameterization`` and, for ``quantize_x0``,
``first_stage_model.quantize``; ``q_sample(x0, t)`` for masked sampling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ldm.modules.diffusionmodules.util import make_ddim_sampling_parameters, make_ddim_timesteps, noise_like
from ldm.util import SettingError

logger = logging.getLogger(__name__)

#: A conditioning as the model takes it: a tensor, a list of tensors, or a dict of those (``c_crossattn``, ...).
Conditioning = Any
#: ``step(x, ts, index, ts_next) -> (x_prev, pred_x0)``: one sampler step on a ``(B, ...)`` batch.
Step = Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class DiffusionModel(Protocol):
    num_timesteps: int
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor: ...


# --------------------------------------------------------------------------------------------------------
# Conditioning and the guided model call
# --------------------------------------------------------------------------------------------------------


def concat_conditionings(uc: Conditioning, c: Conditioning) -> Conditioning:
    """``[uc, c]`` stacked along the batch: tensors are concatenated, lists element-wise, dicts per key."""
    if isinstance(c, dict):
        if not isinstance(uc, dict) or set(uc) != set(c):
            raise TypeError(
                "unconditional_conditioning must be a dict with the same keys as the conditioning "
                f"({sorted(c)}), got {sorted(uc) if isinstance(uc, dict) else type(uc).__name__}."
            )
        return {key: concat_conditionings(uc[key], c[key]) for key in c}
    if isinstance(c, (list, tuple)):
        if not isinstance(uc, (list, tuple)) or len(uc) != len(c):
            raise TypeError(
                f"unconditional_conditioning must be a list of {len(c)} tensors like the conditioning, got "
                f"{type(uc).__name__}."
            )
        return [concat_conditionings(u, v) for u, v in zip(uc, c)]
    return torch.cat([uc, c])


def guided_eps(
    model: DiffusionModel,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning,
    unconditional_conditioning: Conditioning = None,
    unconditional_guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Classifier-free guided ε: ``ε_u + s · (ε_c − ε_u)`` from one model call on the doubled batch ``[uc, c]``.

    Without ``unconditional_conditioning`` or with ``s == 1`` the model runs once on ``(x, t, cond)``.
    """
    if unconditional_conditioning is None or unconditional_guidance_scale == 1.0:
        return model.apply_model(x, t, cond)
    x_in = torch.cat([x, x])
    t_in = torch.cat([t, t])
    c_in = concat_conditionings(unconditional_conditioning, cond)
    e_t_uncond, e_t = model.apply_model(x_in, t_in, c_in).chunk(2)
    return e_t_uncond + unconditional_guidance_scale * (e_t - e_t_uncond)


def model_eps(
    model: DiffusionModel,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning,
    unconditional_conditioning: Conditioning = None,
    unconditional_guidance_scale: float = 1.0,
    score_corrector: Any = None,
    corrector_kwargs: dict | None = None,
) -> torch.Tensor:
    """:func:`guided_eps`, then ``score_corrector.modify_score(model, ε, x, t, cond, **corrector_kwargs)``."""
    e_t = guided_eps(model, x, t, cond, unconditional_conditioning, unconditional_guidance_scale)
    if score_corrector is not None:
        if getattr(model, "parameterization", "eps") != "eps":
            raise SettingError("score_corrector needs an ε-predicting model (parameterization 'eps').")
        e_t = score_corrector.modify_score(model, e_t, x, t, cond, **(corrector_kwargs or {}))
    return e_t


def warn_on_batch_mismatch(conditioning: Conditioning, batch_size: int) -> None:
    """Log a warning when the conditioning's batch differs from ``batch_size`` (the original only warns too)."""
    if conditioning is None:
        return
    first = conditioning
    while isinstance(first, (dict, list, tuple)):
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    if isinstance(first, torch.Tensor) and first.shape[0] != batch_size:
        logger.warning("Got %d conditionings but batch-size is %d", first.shape[0], batch_size)


def progress(iterable: Iterable, desc: str, total: int, disable: bool = False) -> Iterable:
    """A tqdm progress bar over ``iterable`` (``disable`` turns it off)."""
    return tqdm(iterable, desc=desc, total=total, disable=disable)


# --------------------------------------------------------------------------------------------------------
# The DDIM schedule, update and loop shared by DDIM and PLMS
# --------------------------------------------------------------------------------------------------------


class DDIMScheduleSampler:
    """Holds the DDIM sub-schedule of a model and runs the DDIM update ``x_t -> x_{t_prev}``.

    Tensors stored with :meth:`register_buffer` live on the model's device (``model.betas.device``).
    """

    def __init__(self, model: DiffusionModel, schedule: str = "linear", **kwargs: Any) -> None:
        self.model = model
        self.ddpm_num_timesteps = model.num_timesteps
        self.schedule = schedule

    @property
    def device(self) -> torch.device:
        return self.model.betas.device

    def register_buffer(self, name: str, attr: Any) -> None:
        """Store ``attr`` as ``self.<name>``, moving tensors to the model's device."""
        if isinstance(attr, torch.Tensor):
            attr = attr.to(self.device)
        setattr(self, name, attr)

    def make_schedule(
        self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0, verbose: bool = True
    ) -> None:
        """Compute ``ddim_timesteps`` (int64 numpy), ``ddim_alphas`` (float32), ``ddim_alphas_prev`` (float64
        numpy), ``ddim_sigmas`` (float64), ``ddim_sqrt_one_minus_alphas`` (float32), the model's schedule copies
        and ``ddim_sigmas_for_original_num_steps`` (σ_t of every DDPM step for ``use_original_steps``)."""
        self.ddim_timesteps = make_ddim_timesteps(
            ddim_discretize, ddim_num_steps, self.ddpm_num_timesteps, verbose=verbose
        )
        alphas_cumprod = self.model.alphas_cumprod.detach()
        if alphas_cumprod.shape[0] != self.ddpm_num_timesteps:
            raise ValueError(
                f"model.alphas_cumprod has {alphas_cumprod.shape[0]} entries but model.num_timesteps is "
                f"{self.ddpm_num_timesteps}; the schedule must define ᾱ for every timestep."
            )
        to_float = lambda x: x.detach().clone().to(torch.float32)
        ac = to_float(alphas_cumprod)
        ac_prev = to_float(self.model.alphas_cumprod_prev)
        self.register_buffer("betas", to_float(self.model.betas))
        self.register_buffer("alphas_cumprod", ac)
        self.register_buffer("alphas_cumprod_prev", ac_prev)
        self.register_buffer("sqrt_alphas_cumprod", ac.sqrt())
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1.0 - ac).sqrt())
        self.register_buffer("log_one_minus_alphas_cumprod", (1.0 - ac).log())
        self.register_buffer("sqrt_recip_alphas_cumprod", (1.0 / ac).sqrt())
        self.register_buffer("sqrt_recipm1_alphas_cumprod", (1.0 / ac - 1).sqrt())

        sigmas, alphas, alphas_prev = make_ddim_sampling_parameters(
            alphacums=ac.cpu(), ddim_timesteps=self.ddim_timesteps, eta=ddim_eta, verbose=verbose
        )
        self.register_buffer("ddim_sigmas", sigmas)
        self.register_buffer("ddim_alphas", alphas)
        self.register_buffer("ddim_alphas_prev", alphas_prev)
        self.register_buffer("ddim_sqrt_one_minus_alphas", torch.from_numpy(np.sqrt((1.0 - alphas).numpy())))
        original_sigmas = ddim_eta * torch.sqrt((1 - ac_prev) / (1 - ac) * (1 - ac / ac_prev))
        self.register_buffer("ddim_sigmas_for_original_num_steps", original_sigmas)

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

    def _ddim_update(
        self,
        x: torch.Tensor,
        e_t: torch.Tensor,
        index: int,
        use_original_steps: bool = False,
        quantize_denoised: bool = False,
        temperature: float = 1.0,
        noise_dropout: float = 0.0,
        repeat_noise: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step (Song et al. eq. 12) from ``x`` = x_t ``(B, ...)`` with predicted noise ``e_t``.

        x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t;
        x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ_t²) ε + σ_t · temperature · z,  z ~ N(0, I) (always drawn).
        Coefficients are float32 ``(B, 1, ..., 1)`` tensors as in the original. Returns ``(x_prev, x̂_0)``.
        """
        alphas, alphas_prev, sqrt_one_minus_alphas, sigmas = self._step_tables(use_original_steps)
        coefficient_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        full = lambda table: torch.full(coefficient_shape, float(table[index]), device=x.device)
        a_t, a_prev, sigma_t, sqrt_one_minus_at = (
            full(alphas),
            full(alphas_prev),
            full(sigmas),
            full(sqrt_one_minus_alphas),
        )
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        if quantize_denoised:
            pred_x0, _, *_ = self.model.first_stage_model.quantize(pred_x0)
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        noise = sigma_t * noise_like(x.shape, x.device, repeat_noise, generator=generator) * temperature
        if noise_dropout > 0.0:
            noise = F.dropout(noise, p=noise_dropout)
        x_prev = a_prev.sqrt() * pred_x0 + dir_xt + noise
        return x_prev, pred_x0

    def _time_range(self, timesteps: int | np.ndarray | None, use_original_steps: bool) -> np.ndarray:
        """The DDPM timesteps to visit, descending. An int ``timesteps`` keeps the first ``timesteps`` DDIM
        steps minus one (the original's subset rule) or, with ``use_original_steps``, DDPM steps ``< timesteps``."""
        if use_original_steps:
            count = self.ddpm_num_timesteps if timesteps is None else int(timesteps)
            return np.arange(count)[::-1]
        if timesteps is None:
            return np.flip(self.ddim_timesteps)
        n = self.ddim_timesteps.shape[0]
        subset_end = int(min(timesteps / n, 1) * n) - 1
        return np.flip(self.ddim_timesteps[:subset_end])

    def _initial_noise(
        self, shape: tuple[int, ...], x_T: torch.Tensor | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``x_T`` if given, else N(0, I) of ``shape`` on the model's device (float32)."""
        if x_T is not None:
            return x_T
        return torch.randn(shape, device=self.device, generator=generator)

    def _sample_loop(
        self,
        step: Step,
        shape: tuple[int, ...],
        desc: str,
        x_T: torch.Tensor | None = None,
        use_original_steps: bool = False,
        callback: Callable[[int], None] | None = None,
        timesteps: int | np.ndarray | None = None,
        mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        img_callback: Callable[[torch.Tensor, int], None] | None = None,
        log_every_t: int = 100,
        generator: torch.Generator | None = None,
        disable_progress: bool = False,
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Run ``step`` over the descending timesteps from ``x_T`` ``(B, ...)``.

        With ``mask`` (1 = keep), the kept region is replaced by ``q_sample(x0, t)`` before each step.
        Intermediates ``x_inter``/``pred_x0`` start with ``x_T`` and log every ``log_every_t`` indices and the
        first step. Returns ``(x_0, intermediates)``.
        """
        if mask is not None and x0 is None:
            raise SettingError("sampling with a mask needs x0, the latent whose masked region is kept.")
        img = self._initial_noise(shape, x_T, generator)
        time_range = self._time_range(timesteps, use_original_steps)
        total_steps = len(time_range)
        logger.info("Running %s with %d timesteps", desc, total_steps)
        intermediates = {"x_inter": [img], "pred_x0": [img]}
        b = shape[0]
        for i, step_t in enumerate(progress(time_range, desc, total_steps, disable_progress)):
            index = total_steps - i - 1
            ts = torch.full((b,), int(step_t), device=self.device, dtype=torch.long)
            ts_next = torch.full(
                (b,), int(time_range[min(i + 1, total_steps - 1)]), device=self.device, dtype=torch.long
            )
            if mask is not None:
                img = self.model.q_sample(x0, ts) * mask + (1.0 - mask) * img
            img, pred_x0 = step(img, ts, index, ts_next)
            if callback:
                callback(i)
            if img_callback:
                img_callback(pred_x0, i)
            if index % log_every_t == 0 or index == total_steps - 1:
                intermediates["x_inter"].append(img)
                intermediates["pred_x0"].append(pred_x0)
        return img, intermediates
