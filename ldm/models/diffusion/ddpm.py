"""Denoising diffusion in pixel space (``DDPM``); ``LatentDiffusion`` (in ``latent_diffusion.py``) builds on it.

Both are Lightning modules with the original constructor parameters, state-dict keys and logged names. Beside
this file: the denoiser wrapper (:mod:`~ldm.models.diffusion.diffusion_wrapper`), the schedule constants
(:mod:`~ldm.models.diffusion.schedule`), the diffusion equations over them
(:mod:`~ldm.models.diffusion.gaussian_diffusion`), conditioning plumbing
(:mod:`~ldm.models.diffusion.conditioning`), LatentDiffusion's ancestral sampler
(:mod:`~ldm.models.diffusion.latent_sampling`), its image logs (:mod:`~ldm.models.diffusion.image_logging`), its
patch-wise paths (:mod:`~ldm.models.diffusion.patch_folding`) and ``Layout2ImgDiffusion``
(:mod:`~ldm.models.diffusion.layout_diffusion`).

- forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I);
- posterior q(x_{t−1} | x_t, x_0) = N(μ̃(x_t, x_0), β̃_t I), sampled with x_0 predicted by the network;
- loss: ‖target − model(x_t, t)‖ (L1 or L2), target ε (``parameterization="eps"``) or x_0 (``"x0"``), plus
  ``original_elbo_weight`` × the VLB term weighted by ``lvlb_weights``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn
from einops import rearrange
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from ldm.checkpoint import apply_state_dict, load_state_dict_file
from ldm.models.diffusion.conditioning import CONDITIONING_KEYS, drop_conditioning
from ldm.models.diffusion.diffusion_wrapper import DiffusionWrapper
from ldm.models.diffusion.diffusion_wrapper import disabled_train as disabled_train
from ldm.models.diffusion.gaussian_diffusion import GaussianDiffusionMixin
from ldm.models.diffusion.image_logging import logged_timesteps, rows_to_grid, select_keys
from ldm.models.diffusion.schedule import PARAMETERIZATIONS
from ldm.modules.diffusionmodules.util import noise_like
from ldm.modules.ema import LitEma
from ldm.optim import adam
from ldm.util import (
    SettingError,
    UnsupportedSettingError,
    count_params,
    default,
    instantiate_from_config,
    mean_flat,
    to_container,
)

logger = logging.getLogger(__name__)

LOSS_TYPES = ("l1", "l2")
#: ``DiffusionWrapper`` keyword for each conditioning kind, under the original's module-level name.
__conditioning_keys__ = CONDITIONING_KEYS


def uniform_on_device(r1: float, r2: float, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """Uniform draws on the interval between ``r2`` and ``r1``: (r1 − r2) · U[0, 1) + r2, of ``shape``."""
    return (r1 - r2) * torch.rand(*shape, device=device) + r2


# --------------------------------------------------------------------------------------------------------
# DDPM: diffusion in image space
# --------------------------------------------------------------------------------------------------------


class DDPM(GaussianDiffusionMixin, pl.LightningModule):
    """Gaussian diffusion with a fixed variance schedule, trained on the simple (ε or x0) objective.

    Parameters and defaults are the original's; ``ucg_training`` (new, off by default) drops conditionings
    for classifier-free guidance training, see :func:`~ldm.models.diffusion.conditioning.drop_conditioning`.
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
        ucg_training: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise SettingError(f"parameterization {parameterization!r} is not supported; use 'eps' or 'x0'.")
        if loss_type not in LOSS_TYPES:
            raise UnsupportedSettingError(f"loss_type {loss_type!r} is unknown; use 'l1' or 'l2'.")
        self.parameterization = parameterization
        logger.info("%s: Running in %s-prediction mode", type(self).__name__, parameterization)
        self.cond_stage_model = None
        self.clip_denoised = clip_denoised
        self.log_every_t = log_every_t
        self.first_stage_key = first_stage_key
        self.image_size = image_size
        self.channels = channels
        self.use_positional_encodings = use_positional_encodings
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        count_params(self.model, verbose=True)
        self.use_ema = use_ema
        if self.use_ema:
            self.model_ema = LitEma(self.model)
            logger.info("Keeping EMAs of %d.", len(list(self.model_ema.buffers())))

        self.use_scheduler = scheduler_config is not None
        if self.use_scheduler:
            self.scheduler_config = scheduler_config

        self.v_posterior = v_posterior
        self.original_elbo_weight = original_elbo_weight
        self.l_simple_weight = l_simple_weight

        if monitor is not None:
            self.monitor = monitor
        # As in the original, a checkpoint is read before the schedule is registered: the schedule always
        # follows the config.
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=load_only_unet)

        self.register_schedule(
            given_betas=given_betas,
            beta_schedule=beta_schedule,
            timesteps=timesteps,
            linear_start=linear_start,
            linear_end=linear_end,
            cosine_s=cosine_s,
        )
        self.loss_type = loss_type

        self.learn_logvar = learn_logvar
        self.logvar = torch.full(fill_value=logvar_init, size=(self.num_timesteps,))
        if self.learn_logvar:
            self.logvar = nn.Parameter(self.logvar, requires_grad=True)
        self.ucg_training = dict(to_container(ucg_training) or {})

    # ---- EMA, checkpoints ----------------------------------------------------------------------------------

    @contextmanager
    def ema_scope(self, context: str | None = None) -> Iterator[None]:
        """Run the body with the EMA weights in ``self.model``; the training weights come back afterwards."""
        if self.use_ema:
            self.model_ema.store(self.model.parameters())
            self.model_ema.copy_to(self.model)
            if context is not None:
                logger.info("%s: Switched to EMA weights", context)
        try:
            yield None
        finally:
            if self.use_ema:
                self.model_ema.restore(self.model.parameters())
                if context is not None:
                    logger.info("%s: Restored training weights", context)

    def init_from_ckpt(self, path: str | Path, ignore_keys: Sequence[str] = (), only_model: bool = False) -> None:
        """Load a .ckpt / .safetensors state dict (non-strict; keys starting with ``ignore_keys`` dropped).

        ``only_model`` loads it into the ``DiffusionWrapper`` (keys ``diffusion_model.*``) instead of ``self``.
        """
        state_dict = load_state_dict_file(path, config_key="model.params.ckpt_path")
        target = self.model if only_model else self
        apply_state_dict(
            target,
            state_dict,
            ignore_keys=tuple(ignore_keys),
            strict=False,
            what=f"{type(self).__name__}{'.model' if only_model else ''} from {path}",
        )

    # ---- sampling ------------------------------------------------------------------------------------------

    def p_mean_variance(
        self, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """p(x_{t−1} | x_t) = q(x_{t−1} | x_t, x̂_0) with x̂_0 from the network (clamped to [-1, 1] if asked)."""
        x_recon = self._predict_x0(x, t, self.model(x, t))
        if clip_denoised:
            x_recon.clamp_(-1.0, 1.0)
        return self.q_posterior(x_start=x_recon, x_t=x, t=t)

    @torch.no_grad()
    def p_sample(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        repeat_noise: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One ancestral step x_t → x_{t−1} = μ + exp(½ log β̃_t) z, without noise where t = 0.

        ``generator`` (new, optional) draws z, for reproducible samples.
        """
        model_mean, _, model_log_variance = self.p_mean_variance(x=x, t=t, clip_denoised=clip_denoised)
        noise = noise_like(x.shape, x.device, repeat_noise, generator=generator, dtype=x.dtype)
        nonzero_mask = (1 - (t == 0).float()).reshape(x.shape[0], *((1,) * (x.ndim - 1)))
        return model_mean + nonzero_mask * (0.5 * model_log_variance).exp() * noise

    @torch.no_grad()
    def p_sample_loop(
        self, shape: Sequence[int], return_intermediates: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """x_T ~ N(0, I) → x_0 in ``num_timesteps`` ancestral steps; intermediates every ``log_every_t``.

        ``generator`` (new, optional) draws x_T and every step's noise.
        """
        device = self.betas.device
        b = shape[0]
        img = torch.randn(tuple(shape), device=device, generator=generator)
        intermediates = [img]
        for i in tqdm(reversed(range(self.num_timesteps)), desc="Sampling t", total=self.num_timesteps):
            t = torch.full((b,), i, device=device, dtype=torch.long)
            img = self.p_sample(img, t, clip_denoised=self.clip_denoised, generator=generator)
            if i % self.log_every_t == 0 or i == self.num_timesteps - 1:
                intermediates.append(img)
        if return_intermediates:
            return img, intermediates
        return img

    @torch.no_grad()
    def sample(
        self, batch_size: int = 16, return_intermediates: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``batch_size`` samples of shape ``(channels, image_size, image_size)``."""
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        return self.p_sample_loop(shape, return_intermediates=return_intermediates, generator=generator)

    # ---- training ------------------------------------------------------------------------------------------

    def p_losses(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """loss = l_simple_weight · mean(L) + original_elbo_weight · mean(lvlb_weights[t] · L), L per sample.

        Logged as ``{train|val}/loss_simple``, ``/loss_vlb``, ``/loss`` (prefix by ``self.training``).
        """
        noise = default(noise, lambda: torch.randn_like(x_start))
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        model_out = self.model(x_noisy, t)
        loss = mean_flat(self.get_loss(model_out, self._target(x_start, noise), mean=False))

        prefix = "train" if self.training else "val"
        loss_dict = {f"{prefix}/loss_simple": loss.mean()}
        loss_simple = loss.mean() * self.l_simple_weight
        loss_vlb = (self.lvlb_weights[t] * loss).mean()
        loss_dict[f"{prefix}/loss_vlb"] = loss_vlb
        loss = loss_simple + self.original_elbo_weight * loss_vlb
        loss_dict[f"{prefix}/loss"] = loss
        return loss, loss_dict

    def forward(self, x: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss at a uniformly drawn t ∈ {0..T−1} per sample."""
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=self.device).long()
        return self.p_losses(x, t, *args, **kwargs)

    def get_input(self, batch: Mapping[str, Any], k: str) -> torch.Tensor:
        """``batch[k]`` ``(B, H, W, C)`` (or ``(B, H, W)``) → contiguous float ``(B, C, H, W)``."""
        x = batch[k]
        if len(x.shape) == 3:
            x = x[..., None]
        x = rearrange(x, "b h w c -> b c h w")
        return x.to(memory_format=torch.contiguous_format).float()

    def shared_step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.get_input(batch, self.first_stage_key)
        return self(x)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        if self.ucg_training:
            batch = drop_conditioning(batch, self.ucg_training)
        loss, loss_dict = self.shared_step(batch)
        self.log_dict(loss_dict, prog_bar=True, logger=True, on_step=True, on_epoch=True)
        self.log("global_step", float(self.global_step), prog_bar=True, logger=True, on_step=True, on_epoch=False)
        if self.use_scheduler:
            lr = self.optimizers().param_groups[0]["lr"]
            self.log("lr_abs", lr, prog_bar=True, logger=True, on_step=True, on_epoch=False)
        return loss

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Logs ``val/*`` with the training weights and ``val/*_ema`` with the EMA weights."""
        _, loss_dict_no_ema = self.shared_step(batch)
        with self.ema_scope():
            _, loss_dict_ema = self.shared_step(batch)
            loss_dict_ema = {key + "_ema": value for key, value in loss_dict_ema.items()}
        self.log_dict(loss_dict_no_ema, prog_bar=False, logger=True, on_step=False, on_epoch=True)
        self.log_dict(loss_dict_ema, prog_bar=False, logger=True, on_step=False, on_epoch=True)

    def on_train_batch_end(self, *args, **kwargs) -> None:
        if self.use_ema:
            self.model_ema(self.model)

    def _conditioner_parameters(self) -> list[torch.Tensor]:
        """Parameters of a trainable conditioning model (none here)."""
        return []

    def _optimized_parameters(self) -> list[torch.Tensor]:
        """The UNet's, then a trainable conditioner's, then ``logvar`` when learned (the original's order)."""
        params = list(self.model.parameters()) + self._conditioner_parameters()
        if self.learn_logvar:
            logger.info("Diffusion model optimizing logvar")
            params.append(self.logvar)
        return params

    def configure_optimizers(self) -> Any:
        """AdamW(lr=self.learning_rate); with ``scheduler_config``, a LambdaLR on its ``schedule``, every step.

        Torch's fused AdamW where it can (:func:`ldm.optim.adam`): the per-tensor loop's numbers to float rounding,
        several times faster on the CPU (the demo's text encoder alone has 6.3M embedding weights to update).

        Kept difference: the original's pixel-space ``DDPM`` ignored ``scheduler_config`` here (only
        ``LatentDiffusion`` used it) while still logging ``lr_abs``; here both classes apply it.
        """
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
        log = {}
        x = self.get_input(batch, self.first_stage_key)
        N = min(x.shape[0], N)
        n_row = min(x.shape[0], n_row)
        x = x.to(self.device)[:N]
        log["inputs"] = x

        x_start = x[:n_row]
        diffusion_row = []
        for step in logged_timesteps(self.num_timesteps, self.log_every_t):
            t = torch.full((n_row,), step, device=self.device, dtype=torch.long)
            diffusion_row.append(self.q_sample(x_start=x_start, t=t, noise=torch.randn_like(x_start)))
        log["diffusion_row"] = self._get_rows_from_list(diffusion_row)

        if sample:
            with self.ema_scope("Plotting"):
                samples, denoise_row = self.sample(batch_size=N, return_intermediates=True)
            log["samples"] = samples
            log["denoise_row"] = self._get_rows_from_list(denoise_row)
        return select_keys(log, return_keys)


def __getattr__(name: str) -> Any:
    """``ldm.models.diffusion.ddpm.LatentDiffusion`` / ``.Layout2ImgDiffusion``, the paths configs name, live in
    ``latent_diffusion.py`` / ``layout_diffusion.py`` (they import this module)."""
    if name == "LatentDiffusion":
        from ldm.models.diffusion.latent_diffusion import LatentDiffusion

        return LatentDiffusion
    if name == "Layout2ImgDiffusion":
        from ldm.models.diffusion.layout_diffusion import Layout2ImgDiffusion

        return Layout2ImgDiffusion
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
