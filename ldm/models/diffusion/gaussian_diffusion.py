"""The Gaussian diffusion process: every equation over the schedule, with the network passed in as a callable.

With α_t = 1 − β_t and ᾱ_t = ∏_{s≤t} α_s (Ho et al. 2020):

- forward process  q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I);
- posterior        q(x_{t−1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, β̃_t I);
- reverse step     p(x_{t−1} | x_t) = q(x_{t−1} | x_t, x̂_0(x_t)), x̂_0 from the network's output through
  :func:`~ldm.models.diffusion.prediction.split_prediction` (ε, x_0 or v, whichever it predicts);
- training loss    ‖target − output‖ (L1 or L2) per sample, optionally min-SNR weighted and divided by a learned
  e^{logvar_t}, plus the VLB term ``lvlb_weights[t]`` · that distance.

:class:`GaussianDiffusion` owns none of the numbers: it is a view over the schedule buffers a module registers
(:data:`~ldm.models.diffusion.schedule.PERSISTENT_BUFFERS`, ``lvlb_weights``), so moving the module moves them and
checkpoints keep their keys. ``model_fn(x_t, t) -> output`` is any callable: a bare UNet, or a closure that adds
the conditioning (``LatentDiffusion.apply_model``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ldm.models.diffusion.objectives import min_snr_weight, signal_to_noise
from ldm.models.diffusion.prediction import Prediction, split_prediction, training_target
from ldm.models.diffusion.schedule import NON_PERSISTENT_BUFFERS, PERSISTENT_BUFFERS, schedule_buffers
from ldm.modules.distributions.distributions import normal_kl
from ldm.util import SettingError, UnsupportedSettingError, mean_flat

#: ``model_fn(x_t (B, ...), t (B,) int64) -> network output (B, ...)``.
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``denoised_fn(x̂_0) -> x̂_0``: applied to every prediction of x_0 before it enters the posterior.
DenoisedFn = Callable[[torch.Tensor], torch.Tensor]
#: ``on_step(i, x_{i−1}, x̂_0)`` after each ancestral step ``i`` (counting down).
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]

LOSS_TYPES = ("l1", "l2")


def at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``table[t]`` for a ``(T,)`` table and ``(B,)`` steps, shaped ``(B, 1, ..., 1)`` to broadcast over ``like``."""
    picked = table[t] if table.device == t.device else table.to(t.device)[t]
    return picked.view(t.shape[0], *([1] * (like.ndim - 1)))


class PosteriorStep(NamedTuple):
    """One reverse step's Gaussian: ``mean``, ``variance`` and ``log_variance`` (broadcastable to x_t), plus the
    prediction it was built from."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    prediction: Prediction


class ScheduleHolder(nn.Module):
    """A bare module holding the schedule buffers, for a :class:`GaussianDiffusion` used on its own."""

    def __init__(self, betas: Sequence[float] | np.ndarray, v_posterior: float, parameterization: str) -> None:
        super().__init__()
        buffers = schedule_buffers(np.asarray(betas, dtype=np.float64), v_posterior, parameterization)
        for name in PERSISTENT_BUFFERS:
            self.register_buffer(name, buffers[name])
        for name in NON_PERSISTENT_BUFFERS:
            self.register_buffer(name, buffers[name], persistent=False)
        self.parameterization = parameterization
        self.loss_type = "l2"


class GaussianDiffusion:
    """The diffusion equations over ``schedule``'s buffers (``betas``, ``alphas_cumprod``, ... all ``(T,)``).

    ``schedule`` also supplies ``parameterization`` ("eps", "x0" or "v") and ``loss_type`` ("l1" or "l2"), read at
    each call, so a module that assigns them later is followed.
    """

    def __init__(self, schedule: nn.Module) -> None:
        self.schedule = schedule

    @classmethod
    def from_betas(
        cls, betas: Sequence[float] | np.ndarray, parameterization: str = "eps", v_posterior: float = 0.0
    ) -> GaussianDiffusion:
        """A stand-alone process for β_1..β_T (e.g. ``make_beta_schedule("linear", 1000)``)."""
        return cls(ScheduleHolder(betas, v_posterior, parameterization))

    @property
    def num_timesteps(self) -> int:
        return int(self.schedule.betas.shape[0])

    @property
    def parameterization(self) -> str:
        return self.schedule.parameterization

    # ---- the forward process -------------------------------------------------------------------------------

    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean √ᾱ_t x_0, variance 1 − ᾱ_t and log(1 − ᾱ_t) of q(x_t | x_0)."""
        s = self.schedule
        return at(s.sqrt_alphas_cumprod, t, x0) * x0, 1.0 - at(s.alphas_cumprod, t, x0), at(
            s.log_one_minus_alphas_cumprod, t, x0
        )

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a draw from q(x_t | x_0) for the given ε."""
        s = self.schedule
        return at(s.sqrt_alphas_cumprod, t, x0) * x0 + at(s.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t−1} | x_t, x_0): mean c1_t x_0 + c2_t x_t, variance β̃_t and log β̃_t (clipped at 1e-20)."""
        s = self.schedule
        mean = at(s.posterior_mean_coef1, t, x_t) * x0 + at(s.posterior_mean_coef2, t, x_t) * x_t
        return mean, at(s.posterior_variance, t, x_t), at(s.posterior_log_variance_clipped, t, x_t)

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) ‖ N(0, I)) per sample ``(B,)``, averaged over dimensions, in bits."""
        t_last = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device, dtype=torch.long)
        mean, _, log_variance = self.q_mean_variance(x0, t_last)
        return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)

    # ---- predictions ---------------------------------------------------------------------------------------

    def split(self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor) -> Prediction:
        """(x̂_0, ε̂) of a network output at x_t, whatever the network predicts."""
        s = self.schedule
        a, sigma = at(s.sqrt_alphas_cumprod, t, x_t), at(s.sqrt_one_minus_alphas_cumprod, t, x_t)
        return split_prediction(self.parameterization, x_t, model_output, a, sigma)

    def from_velocity(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> Prediction:
        """(x̂_0, ε̂) of a v-prediction, whatever the network's own parameterization."""
        s = self.schedule
        a, sigma = at(s.sqrt_alphas_cumprod, t, x_t), at(s.sqrt_one_minus_alphas_cumprod, t, x_t)
        return split_prediction("v", x_t, v, a, sigma)

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x̂_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε, from the reciprocal buffers."""
        s = self.schedule
        return at(s.sqrt_recip_alphas_cumprod, t, x_t) * x_t - at(s.sqrt_recipm1_alphas_cumprod, t, x_t) * noise

    def predict_eps_from_start(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """ε̂ = (√(1/ᾱ_t) x_t − x̂_0) / √(1/ᾱ_t − 1), the inverse of :meth:`predict_start_from_noise`."""
        s = self.schedule
        scaled = at(s.sqrt_recip_alphas_cumprod, t, x_t) * x_t
        return (scaled - x0) / at(s.sqrt_recipm1_alphas_cumprod, t, x_t)

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0, the v-prediction target."""
        s = self.schedule
        return training_target(
            "v", x0, noise, at(s.sqrt_alphas_cumprod, t, x0), at(s.sqrt_one_minus_alphas_cumprod, t, x0)
        )

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output at x_t = q_sample(x0, t, noise): ε, x_0 or v."""
        s = self.schedule
        a, sigma = at(s.sqrt_alphas_cumprod, t, x0), at(s.sqrt_one_minus_alphas_cumprod, t, x0)
        return training_target(self.parameterization, x0, noise, a, sigma)

    # ---- the reverse process -------------------------------------------------------------------------------

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
    ) -> PosteriorStep:
        """p(x_{t−1} | x_t) = q(x_{t−1} | x_t, x̂_0): x̂_0 from the output, clamped to [−1, 1] with
        ``clip_denoised``, then passed through ``denoised_fn``."""
        prediction = self.split(x_t, t, model_output)
        x0 = prediction.x0.clamp(-1.0, 1.0) if clip_denoised else prediction.x0
        if denoised_fn is not None:
            x0 = denoised_fn(x0)
        mean, variance, log_variance = self.q_posterior(x0, x_t, t)
        return PosteriorStep(mean, variance, log_variance, Prediction(x0=x0, eps=prediction.eps))

    @staticmethod
    def draw(
        mean: torch.Tensor,
        log_variance: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        temperature: float = 1.0,
        noise_dropout: float = 0.0,
    ) -> torch.Tensor:
        """x_{t−1} = μ + e^{½ log β̃_t} · temperature · z, with no noise where t = 0 (dropout on z if asked)."""
        z = noise * temperature
        if noise_dropout > 0.0:
            z = F.dropout(z, p=noise_dropout)
        keep = (t != 0).to(mean.dtype).view(t.shape[0], *([1] * (mean.ndim - 1)))
        return mean + keep * (0.5 * log_variance).exp() * z

    def p_sample_loop(
        self,
        model_fn: ModelFn,
        x_T: torch.Tensor,
        *,
        steps: int | None = None,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
        draw_noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        temperature: float | Sequence[float] = 1.0,
        noise_dropout: float = 0.0,
        log_every_t: int = 100,
        record: str = "x_t",
        on_step: StepCallback | None = None,
        progress: str | None = "Sampling t",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Ancestral sampling from x_T ``(B, ...)`` through steps ``steps − 1, ..., 0`` (default: all T).

        :param draw_noise: ``draw_noise(x) -> z``, the noise of one step (default: ``randn`` with ``generator``).
        :param mask: where 1, the sample is replaced after each step by q_sample(``x0``, t) (inpainting keeps
            those regions); ``(B or 1, 1 or C, ...)``, broadcast over x_t.
        :param temperature: scales z; a sequence gives one value per timestep (indexed by t).
        :param record: ``"x_t"``: intermediates are x_T, then the sample after every ``log_every_t``-th step and
            the first; ``"x0"``: x̂_0 at those steps (no x_T).
        :returns: the final sample and the intermediates.
        """
        steps = self.num_timesteps if steps is None else steps
        if mask is not None:
            if x0 is None:
                raise SettingError("ancestral sampling with a mask needs x0, the latents to keep.")
            if x0.shape[2:] != mask.shape[2:]:
                raise SettingError(f"mask {tuple(mask.shape)} and x0 {tuple(x0.shape)} differ in size.")
        if draw_noise is None:
            draw_noise = lambda x: torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        temperatures = [temperature] * steps if isinstance(temperature, (int, float)) else list(temperature)
        x = x_T
        intermediates = [x] if record == "x_t" else []
        timesteps = reversed(range(steps))
        for i in tqdm(timesteps, desc=progress, total=steps) if progress else timesteps:
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            step = self.p_mean_variance(model_fn(x, t), x, t, clip_denoised, denoised_fn)
            x = self.draw(step.mean, step.log_variance, t, draw_noise(x), temperatures[i], noise_dropout)
            if mask is not None:
                noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
                x = self.q_sample(x0, t, noise) * mask + (1.0 - mask) * x
            if i % log_every_t == 0 or i == steps - 1:
                intermediates.append(x if record == "x_t" else step.prediction.x0)
            if on_step is not None:
                on_step(i, x, step.prediction.x0)
        return x, intermediates

    # ---- training ------------------------------------------------------------------------------------------

    def distance(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Element-wise |target − output| (``l1``) or (target − output)² (``l2``)."""
        loss_type = self.schedule.loss_type
        if loss_type == "l1":
            return (target - output).abs()
        if loss_type == "l2":
            return F.mse_loss(output, target, reduction="none")
        raise UnsupportedSettingError(f"loss_type {loss_type!r} is unknown; use one of {LOSS_TYPES}.")

    def training_losses(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        logvar: torch.Tensor | None = None,
        *,
        input_noise: torch.Tensor | None = None,
        snr_gamma: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """The per-sample ``(B,)`` loss terms at x_t = q_sample(x0, t, noise).

        - ``simple``: w_t · L, L the mean over dimensions of the distance between output and target;
        - ``gamma``: w_t · L / e^{logvar_t} + logvar_t (only with a ``(T,)`` ``logvar``, the learned log-variance);
        - ``vlb``: lvlb_weights[t] · L, the variational bound's term up to constants (never min-SNR weighted: the
          bound has its own weights).

        w_t = 1 unless ``snr_gamma`` γ is set: then w_t is the min-SNR-γ weight
        (:func:`~ldm.models.diffusion.objectives.min_snr_weight`) and the terms also hold ``snr_weight`` (w_t) and
        ``simple_unweighted`` (L). ``input_noise`` (input perturbation, ε + p ξ) makes x_t instead of ``noise``,
        while the target stays that of ``noise``.
        """
        x_t = self.q_sample(x0, t, noise if input_noise is None else input_noise)
        output = model_fn(x_t, t)
        unweighted = mean_flat(self.distance(output, self.target(x0, noise, t)))
        terms = {"vlb": self.schedule.lvlb_weights[t] * unweighted}
        if snr_gamma is None:
            simple = unweighted
        else:
            snr = signal_to_noise(self.schedule.alphas_cumprod, t)
            weight = min_snr_weight(snr, snr_gamma, self.parameterization).to(unweighted.dtype)
            simple = weight * unweighted
            terms.update(snr_weight=weight, simple_unweighted=unweighted)
        terms["simple"] = simple
        if logvar is not None:
            logvar_t = logvar.to(simple.device)[t]
            terms["gamma"] = simple / torch.exp(logvar_t) + logvar_t
        return terms
