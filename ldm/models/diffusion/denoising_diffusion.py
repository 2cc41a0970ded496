"""``DDPM``: the Lightning module of denoising diffusion in pixel space, and the base of ``LatentDiffusion``.

The module keeps the Lightning concerns (inputs, training and validation steps, EMA, optimiser, image logs) and the
schedule buffers; every equation is :class:`~ldm.models.diffusion.gaussian_diffusion.GaussianDiffusion`'s, reached
through :attr:`DDPM.diffusion` with the network passed in as ``model_fn``. Configs name the class
``ldm.models.diffusion.ddpm.DDPM``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn
from einops import rearrange
from torch.optim.lr_scheduler import LambdaLR

from ldm.checkpoint import apply_state_dict, load_state_dict_file
from ldm.models.diffusion.conditioning import drop_conditioning
from ldm.models.diffusion.diffusion_wrapper import DiffusionWrapper
from ldm.models.diffusion.ema_resets import apply_ema_resets
from ldm.models.diffusion.gaussian_diffusion import LOSS_TYPES, GaussianDiffusion
from ldm.models.diffusion.image_logging import logged_timesteps, rows_to_grid, select_keys
from ldm.models.diffusion.objectives import TrainingObjective
from ldm.models.diffusion.prediction import parse_parameterization
from ldm.models.diffusion.schedule import (
    NON_PERSISTENT_BUFFERS,
    make_betas,
    rescale_zero_terminal_snr,
    schedule_buffers,
)
from ldm.models.diffusion.weight_fitting import make_it_fit
from ldm.modules.diffusionmodules.util import noise_like
from ldm.modules.ema import LitEma, ema_weights
from ldm.optim import adam
from ldm.util import SettingError, UnsupportedSettingError, count_params, instantiate_from_config, to_container

logger = logging.getLogger(__name__)


def random_timesteps(batch_size: int, num_timesteps: int, device: torch.device | str) -> torch.Tensor:
    """t ~ U{0, ..., T − 1}, one per sample, ``(B,)`` int64."""
    return torch.randint(0, num_timesteps, (batch_size,), device=device).long()


class DDPM(pl.LightningModule):
    """Gaussian diffusion with a fixed variance schedule, trained on the simple (ε or x0) objective.

    ``ucg_training`` drops conditionings for classifier-free guidance training, see
    :func:`~ldm.models.diffusion.conditioning.drop_conditioning`. ``make_it_fit`` lets ``ckpt_path`` hold tensors
    of other shapes (:func:`~ldm.models.diffusion.weight_fitting.make_it_fit`); ``reset_ema`` and
    ``reset_num_ema_updates``: :func:`~ldm.models.diffusion.ema_resets.apply_ema_resets`.

    Optional objectives, all off by default (:mod:`~ldm.models.diffusion.objectives`): ``snr_gamma`` (min-SNR-γ
    loss weights), ``noise_offset`` (offset noise), ``input_perturbation``; ``zero_terminal_snr`` rescales the
    betas so that ᾱ_T = 0 (:func:`~ldm.models.diffusion.schedule.rescale_zero_terminal_snr`; needs v- or
    x0-prediction, and at sampling time the "trailing" timestep spacing).
    """

    def __init__(
        self,
        unet_config: Any,
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        loss_type: str = "l2",
        ckpt_path: str | None = None,
        ignore_keys: Sequence[str] = (),
        load_only_unet: bool = False,
        monitor: str | None = "val/loss",
        use_ema: bool = True,
        first_stage_key: str = "image",
        image_size: int = 256,
        channels: int = 3,
        log_every_t: int = 100,
        clip_denoised: bool = True,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
        given_betas: Sequence[float] | None = None,
        original_elbo_weight: float = 0.0,
        v_posterior: float = 0.0,
        l_simple_weight: float = 1.0,
        conditioning_key: str | None = None,
        parameterization: str = "eps",
        scheduler_config: Any = None,
        use_positional_encodings: bool = False,
        learn_logvar: bool = False,
        logvar_init: float = 0.0,
        make_it_fit: bool = False,
        ucg_training: Mapping[str, Mapping[str, Any]] | None = None,
        reset_ema: bool = False,
        reset_num_ema_updates: bool = False,
        *,
        snr_gamma: float | None = None,
        noise_offset: float = 0.0,
        input_perturbation: float = 0.0,
        zero_terminal_snr: bool = False,
    ):
        super().__init__()
        parse_parameterization(parameterization)
        if zero_terminal_snr and parameterization == "eps":
            raise SettingError(
                "model.params.zero_terminal_snr: true makes x_T pure noise, where an ε-prediction determines no x̂_0; "
                "set model.params.parameterization: v (or x0)."
            )
        #: The objective options (``snr_gamma``, ``noise_offset``, ``input_perturbation``), checked once.
        self.objective = TrainingObjective(snr_gamma, noise_offset, input_perturbation)
        self.zero_terminal_snr = bool(zero_terminal_snr)
        if loss_type not in LOSS_TYPES:
            raise UnsupportedSettingError(f"loss_type {loss_type!r} is unknown; use 'l1' or 'l2'.")
        logger.info("%s: Running in %s-prediction mode", type(self).__name__, parameterization)
        self.parameterization = parameterization
        self.loss_type = loss_type
        self.v_posterior = v_posterior
        self.original_elbo_weight = original_elbo_weight
        self.l_simple_weight = l_simple_weight
        self.clip_denoised = clip_denoised
        self.log_every_t = log_every_t
        self.first_stage_key = first_stage_key
        self.image_size = image_size
        self.channels = channels
        self.use_positional_encodings = use_positional_encodings
        self.cond_stage_model = None
        self.ucg_training = dict(to_container(ucg_training) or {})
        if monitor is not None:
            self.monitor = monitor
        self.use_scheduler = scheduler_config is not None
        if self.use_scheduler:
            self.scheduler_config = scheduler_config

        self.model = DiffusionWrapper(unet_config, conditioning_key)
        count_params(self.model, verbose=True)
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self.model)
            logger.info("Keeping EMAs of %d.", len(list(self.model_ema.buffers())))

        # The checkpoint is read before the schedule exists, so the schedule always follows the config.
        self.make_it_fit = make_it_fit
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=load_only_unet)
        apply_ema_resets(self, ckpt_path, reset_ema, reset_num_ema_updates)
        self.register_schedule(given_betas, beta_schedule, timesteps, linear_start, linear_end, cosine_s)

        self.learn_logvar = learn_logvar
        logvar = torch.full((self.num_timesteps,), float(logvar_init))
        self.logvar = nn.Parameter(logvar, requires_grad=True) if learn_logvar else logvar

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """A ``logvar`` entry (checkpoints of forks that keep it as a buffer, e.g. ControlNet's) loads into the
        learned ``logvar`` with ``learn_logvar``; otherwise it is accepted and dropped (the fixed ``logvar`` is
        ``logvar_init``, as the original never stores it), so strict loads of such checkpoints work."""
        if not getattr(self, "learn_logvar", False):
            state_dict.pop(f"{prefix}logvar", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- the diffusion process -----------------------------------------------------------------------------

    @property
    def diffusion(self) -> GaussianDiffusion:
        """The process over this module's schedule buffers."""
        return GaussianDiffusion(self)

    def register_schedule(
        self,
        given_betas: Sequence[float] | None = None,
        beta_schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
    ) -> None:
        """(Re)build the schedule: the persistent ``(T,)`` buffers and the recomputed ``lvlb_weights``; rescaled to
        zero terminal SNR when ``self.zero_terminal_snr``."""
        betas = make_betas(given_betas, beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        if getattr(self, "zero_terminal_snr", False):
            betas = rescale_zero_terminal_snr(betas)
        self.num_timesteps = len(betas)
        self.linear_start, self.linear_end = linear_start, linear_end
        for name, table in schedule_buffers(betas, self.v_posterior, self.parameterization).items():
            self.register_buffer(name, table, persistent=name not in NON_PERSISTENT_BUFFERS)

    def q_mean_variance(
        self, x_start: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        return self.diffusion.q_mean_variance(x_start, t)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (ε drawn when not given)."""
        return self.diffusion.q_sample(x_start, t, torch.randn_like(x_start) if noise is None else noise)

    def q_posterior(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance β̃_t and clipped log β̃_t of q(x_{t−1} | x_t, x_0)."""
        return self.diffusion.q_posterior(x_start, x_t, t)

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x̂_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε."""
        return self.diffusion.predict_start_from_noise(x_t, t, noise)

    def _predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        """ε̂ from x̂_0, the inverse of :meth:`predict_start_from_noise`."""
        return self.diffusion.predict_eps_from_start(x_t, t, pred_xstart)

    def predict_start_from_z_and_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v."""
        return self.diffusion.from_velocity(x_t, t, v).x0

    def predict_eps_from_z_and_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v."""
        return self.diffusion.from_velocity(x_t, t, v).eps

    def get_v(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0."""
        return self.diffusion.velocity(x, noise, t)

    def _prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) ‖ N(0, I)) per sample, in bits per dimension."""
        return self.diffusion.prior_bpd(x_start)

    def get_loss(self, pred: torch.Tensor, target: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """L1 or L2 distance by ``loss_type``, element-wise or averaged (``mean``)."""
        distance = self.diffusion.distance(pred, target)
        return distance.mean() if mean else distance

    # ---- EMA, checkpoints ----------------------------------------------------------------------------------

    def ema_scope(self, context: str | None = None) -> Any:
        """A context in which ``self.model`` carries the EMA weights (when ``use_ema``)."""
        return ema_weights(self.model_ema if self.use_ema else None, self.model, context)

    def init_from_ckpt(self, path: str | Path, ignore_keys: Sequence[str] = (), only_model: bool = False) -> None:
        """Load a .ckpt / .safetensors state dict (non-strict; keys starting with ``ignore_keys`` dropped).

        ``only_model`` loads it into the ``DiffusionWrapper`` (keys ``diffusion_model.*``) instead of ``self``.
        With ``self.make_it_fit`` tensors of other shapes are tiled to the model's first.
        """
        state_dict = load_state_dict_file(path, config_key="model.params.ckpt_path")
        target = self.model if only_model else self
        self._fit_checkpoint(state_dict, target)
        where = f"{type(self).__name__}{'.model' if only_model else ''} from {path}"
        apply_state_dict(target, state_dict, ignore_keys=tuple(ignore_keys), strict=False, what=where)

    def _fit_checkpoint(self, state_dict: dict[str, torch.Tensor], target: nn.Module) -> None:
        """Adapt checkpoint tensors to ``target``'s shapes before loading (in place): tiling by ``make_it_fit``."""
        if getattr(self, "make_it_fit", False):
            make_it_fit(state_dict, {**dict(target.named_parameters()), **dict(target.named_buffers())})

    # ---- sampling ------------------------------------------------------------------------------------------

    def p_mean_variance(
        self, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, β̃_t, log β̃_t) of p(x_{t−1} | x_t) with x̂_0 from the network."""
        step = self.diffusion.p_mean_variance(self.model(x, t), x, t, clip_denoised)
        return step.mean, step.variance, step.log_variance

    @torch.no_grad()
    def p_sample(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        repeat_noise: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One ancestral step x_t → x_{t−1} (no noise where t = 0); ``generator`` draws the noise."""
        mean, _, log_variance = self.p_mean_variance(x, t, clip_denoised)
        noise = noise_like(x.shape, x.device, repeat_noise, generator=generator, dtype=x.dtype)
        return self.diffusion.draw(mean, log_variance, t, noise)

    @torch.no_grad()
    def p_sample_loop(
        self, shape: Sequence[int], return_intermediates: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """x_T ~ N(0, I) → x_0 in ``num_timesteps`` ancestral steps; intermediates every ``log_every_t``."""
        x_T = torch.randn(tuple(shape), device=self.betas.device, generator=generator)
        sample, intermediates = self.diffusion.p_sample_loop(
            self.model, x_T, clip_denoised=self.clip_denoised, log_every_t=self.log_every_t, generator=generator
        )
        return (sample, intermediates) if return_intermediates else sample

    @torch.no_grad()
    def sample(
        self, batch_size: int = 16, return_intermediates: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``batch_size`` samples of shape ``(channels, image_size, image_size)``."""
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        return self.p_sample_loop(shape, return_intermediates=return_intermediates, generator=generator)

    # ---- training ------------------------------------------------------------------------------------------

    def _log_prefix(self) -> str:
        return "train" if self.training else "val"

    def objective_losses(
        self, model_fn: Any, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None,
        logvar: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`GaussianDiffusion.training_losses` with this model's objective options.

        ε (when not given) is offset noise while training, N(0, I) otherwise; input perturbation applies while
        training only (so validation losses measure the plain objective); min-SNR weights apply to both.
        """
        objective = self.objective
        noise = objective.draw_noise(x_start, self.training) if noise is None else noise
        return self.diffusion.training_losses(
            model_fn, x_start, t, noise, logvar=logvar, input_noise=objective.input_noise(noise, self.training),
            snr_gamma=objective.snr_gamma,
        )  # fmt: skip

    def objective_logs(self, terms: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """``{prefix}/snr_weight`` (mean w_t) and ``/loss_simple_unweighted`` when min-SNR weighting is on."""
        if "snr_weight" not in terms:
            return {}
        return {f"{prefix}/snr_weight": terms["snr_weight"].mean(),
                f"{prefix}/loss_simple_unweighted": terms["simple_unweighted"].mean()}

    def p_losses(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """loss = l_simple_weight · mean(w_t L) + original_elbo_weight · mean(lvlb_weights[t] · L), L per sample,
        w_t the min-SNR weight (1 unless ``snr_gamma``).

        Logged as ``{train|val}/loss_simple``, ``/loss_vlb``, ``/loss`` (and :meth:`objective_logs`).
        """
        terms = self.objective_losses(self.model, x_start, t, noise)
        simple, vlb = terms["simple"].mean(), terms["vlb"].mean()
        loss = self.l_simple_weight * simple + self.original_elbo_weight * vlb
        prefix = self._log_prefix()
        logs = {f"{prefix}/loss_simple": simple, f"{prefix}/loss_vlb": vlb, f"{prefix}/loss": loss}
        return loss, {**logs, **self.objective_logs(terms, prefix)}

    def forward(self, x: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss at a uniformly drawn t ∈ {0..T−1} per sample."""
        return self.p_losses(x, random_timesteps(x.shape[0], self.num_timesteps, self.device), *args, **kwargs)

    def get_input(self, batch: Mapping[str, Any], k: str) -> torch.Tensor:
        """``batch[k]`` ``(B, H, W, C)`` (or ``(B, H, W)``) → contiguous float ``(B, C, H, W)``."""
        return images_channels_first(batch[k])

    def shared_step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self(self.get_input(batch, self.first_stage_key))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss of one batch (conditionings dropped first when ``ucg_training``); logs it, the step and the LR."""
        batch = drop_conditioning(batch, self.ucg_training) if self.ucg_training else batch
        loss, terms = self.shared_step(batch)
        per_step = {"global_step": float(self.global_step)}
        if self.use_scheduler:
            per_step["lr_abs"] = self.optimizers().param_groups[0]["lr"]
        for values, also_per_epoch in ((terms, True), (per_step, False)):
            self.log_dict(values, prog_bar=True, logger=True, on_step=True, on_epoch=also_per_epoch)
        return loss

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Logs ``val/*`` with the training weights and ``val/*_ema`` with the EMA weights."""
        _, plain = self.shared_step(batch)
        with self.ema_scope():
            _, averaged = self.shared_step(batch)
        self.log_dict(plain, prog_bar=False, logger=True, on_step=False, on_epoch=True)
        self.log_dict({f"{key}_ema": value for key, value in averaged.items()}, prog_bar=False, logger=True,
                      on_step=False, on_epoch=True)

    def on_train_batch_end(self, *args, **kwargs) -> None:
        if self.use_ema:
            self.model_ema(self.model)

    def _conditioner_parameters(self) -> list[torch.Tensor]:
        """Parameters of a trainable conditioning model (none here)."""
        return []

    def _optimized_parameters(self) -> list[torch.Tensor]:
        """The UNet's, then a trainable conditioner's, then ``logvar`` when learned."""
        params = [*self.model.parameters(), *self._conditioner_parameters()]
        if self.learn_logvar:
            logger.info("Diffusion model optimizing logvar")
            params.append(self.logvar)
        return params

    def configure_optimizers(self) -> Any:
        """AdamW(lr=self.learning_rate); with ``scheduler_config``, a LambdaLR on its ``schedule``, every step."""
        lr = getattr(self, "learning_rate", None)
        if lr is None:
            raise AttributeError(
                f"{type(self).__name__}.learning_rate is not set; set it before training "
                "(main.py derives it from model.base_learning_rate)."
            )
        opt = adam(torch.optim.AdamW, self._optimized_parameters(), lr=lr)
        if not self.use_scheduler:
            return opt
        if "target" not in self.scheduler_config:
            raise SettingError("scheduler_config needs a 'target', e.g. ldm.lr_scheduler.LambdaLinearScheduler.")
        schedule = instantiate_from_config(self.scheduler_config, name="scheduler_config")
        logger.info("Setting up LambdaLR scheduler...")
        return [opt], [{"scheduler": LambdaLR(opt, lr_lambda=schedule.schedule), "interval": "step", "frequency": 1}]

    # ---- image logs ----------------------------------------------------------------------------------------

    def _get_rows_from_list(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        return rows_to_grid(samples)

    @torch.no_grad()
    def log_images(
        self,
        batch: Mapping[str, Any],
        N: int = 8,
        n_row: int = 2,
        sample: bool = True,
        return_keys: Sequence[str] | None = None,
        **kwargs,
    ) -> dict[str, torch.Tensor]:
        """``inputs``, ``diffusion_row`` (q_sample at the logged steps), ``samples`` and ``denoise_row`` (EMA)."""
        x = self.get_input(batch, self.first_stage_key)
        N, n_row = min(x.shape[0], N), min(x.shape[0], n_row)
        x = x.to(self.device)[:N]
        log = {"inputs": x}
        rows = x[:n_row]
        noised = []
        for step in logged_timesteps(self.num_timesteps, self.log_every_t):
            t = torch.full((n_row,), step, device=self.device, dtype=torch.long)
            noised.append(self.q_sample(x_start=rows, t=t, noise=torch.randn_like(rows)))
        log["diffusion_row"] = self._get_rows_from_list(noised)
        if sample:
            with self.ema_scope("Plotting"):
                log["samples"], chain = self.sample(batch_size=N, return_intermediates=True)
            log["denoise_row"] = self._get_rows_from_list(chain)
        return select_keys(log, return_keys)


def images_channels_first(x: torch.Tensor) -> torch.Tensor:
    """A batch of images ``(B, H, W, C)`` (or ``(B, H, W)``) as contiguous float ``(B, C, H, W)``."""
    if x.ndim == 3:
        x = x[..., None]
    return rearrange(x, "b h w c -> b c h w").to(memory_format=torch.contiguous_format).float()
