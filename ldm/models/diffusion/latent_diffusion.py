"""``LatentDiffusion``: DDPM on the latents of a frozen autoencoder, conditioned by a conditioning model.

The module composes three parts: the first stage (``encode_first_stage`` / ``decode_first_stage``), the
conditioner (``get_learned_conditioning``) and the denoiser (``apply_model(x_t, t, cond)``); the diffusion
equations get ``model_fn = apply_model(·, ·, cond)`` and never see the conditioning. Configs name the class
``ldm.models.diffusion.ddpm.LatentDiffusion``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from einops import rearrange

from ldm.models.autoencoder import VQModelInterface
from ldm.models.diffusion import cached_inputs, image_logging, patch_folding
from ldm.models.diffusion import latent_sampling as ancestral
from ldm.models.diffusion.conditioning import (
    as_wrapper_kwargs,
    rescale_bboxes,
    take_batch,
    unconditional_conditioning,
)
from ldm.models.diffusion.denoising_diffusion import DDPM, images_channels_first, random_timesteps
from ldm.models.diffusion.diffusion_wrapper import freeze_module, require_checkpoint_file
from ldm.models.diffusion.ema_resets import apply_ema_resets
from ldm.models.diffusion.schedule import cond_schedule_ids
from ldm.modules.diffusionmodules.util import noise_like
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import (
    SENTINELS,
    SettingError,
    default,
    instantiate_from_config,
    to_container,
)

logger = logging.getLogger(__name__)

#: Keywords LatentDiffusion handles after its parts are built instead of passing them on to DDPM, with defaults.
LATE_KEYWORDS = {
    "ckpt_path": None,
    "ignore_keys": (),
    "split_input_params": None,
    "reset_ema": False,
    "reset_num_ema_updates": False,
}


# --------------------------------------------------------------------------------------------------------
# LatentDiffusion: diffusion on the latents of a frozen autoencoder, with a conditioning model
# --------------------------------------------------------------------------------------------------------


class LatentDiffusion(DDPM):
    """DDPM on z = scale_factor · E(x), E a frozen first-stage autoencoder, conditioned on c = τ(y).

    ``cond_stage_config`` is a model config, ``"__is_first_stage__"`` (τ = E) or ``"__is_unconditional__"``.
    Other keyword arguments go to :class:`DDPM`. Patch-wise processing of large inputs follows
    ``self.split_input_params`` (:mod:`~ldm.models.diffusion.patch_folding`; it may also be passed as a keyword).
    ``get_input`` reads ``caption``, ``txt`` and ``coordinates_bbox`` conditionings as they are (lists).
    ``force_null_conditioning`` keeps the wrapper's ``conditioning_key`` for an ``"__is_unconditional__"`` model and
    makes ``get_input`` give c = None; ``reset_ema`` / ``reset_num_ema_updates`` apply after ``ckpt_path`` is read.
    """

    def __init__(
        self,
        first_stage_config: Any,
        cond_stage_config: Any,
        num_timesteps_cond: int | None = None,
        cond_stage_key: str = "image",
        cond_stage_trainable: bool = False,
        concat_mode: bool = True,
        cond_stage_forward: str | None = None,
        conditioning_key: str | None = None,
        scale_factor: float = 1.0,
        scale_by_std: bool = False,
        force_null_conditioning: bool = False,
        *args,
        **kwargs,
    ):
        if kwargs.get("use_positional_encodings", False):
            raise NotImplementedError(
                "use_positional_encodings is not implemented for LatentDiffusion (no latent position shifts are "
                "defined for it); set it to false."
            )
        timesteps = kwargs.get("timesteps", 1000)
        cond_steps = 1 if num_timesteps_cond is None else num_timesteps_cond
        if cond_steps > timesteps:
            raise SettingError(f"num_timesteps_cond ({cond_steps}) must not exceed timesteps ({timesteps}).")
        # Read by register_schedule, which DDPM.__init__ calls.
        self.num_timesteps_cond, self.scale_by_std = cond_steps, scale_by_std
        late = {key: kwargs.pop(key, default) for key, default in LATE_KEYWORDS.items()}
        self.force_null_conditioning = force_null_conditioning
        wrapper_key = _wrapper_conditioning_key(
            conditioning_key, concat_mode, cond_stage_config, force_null_conditioning
        )
        super().__init__(*args, conditioning_key=wrapper_key, **kwargs)

        self.concat_mode, self.cond_stage_trainable = concat_mode, cond_stage_trainable
        self.cond_stage_key, self.cond_stage_forward = cond_stage_key, cond_stage_forward
        self.num_downs = _num_downs(first_stage_config)
        if scale_by_std:
            self.register_buffer("scale_factor", torch.tensor(scale_factor, device="cpu"))
        else:
            self.scale_factor = scale_factor
        self.instantiate_first_stage(first_stage_config)
        self.instantiate_cond_stage(cond_stage_config)
        self.clip_denoised = False
        self.bbox_tokenizer = None
        if late["split_input_params"] is not None:
            self.split_input_params = dict(to_container(late["split_input_params"]))
        # The whole model's checkpoint is read once every part exists.
        self.restarted_from_ckpt = late["ckpt_path"] is not None
        if self.restarted_from_ckpt:
            self.init_from_ckpt(late["ckpt_path"], late["ignore_keys"])
        apply_ema_resets(self, late["ckpt_path"], late["reset_ema"], late["reset_num_ema_updates"])

    # ---- construction --------------------------------------------------------------------------------------

    def make_cond_schedule(self) -> None:
        """``cond_ids[t]``: the timestep at which the conditioning is noised when ``num_timesteps_cond > 1``."""
        self.cond_ids = cond_schedule_ids(self.num_timesteps, self.num_timesteps_cond)

    def register_schedule(
        self,
        given_betas: Sequence[float] | None = None,
        beta_schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
    ) -> None:
        super().register_schedule(given_betas, beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        self.shorten_cond_schedule = self.num_timesteps_cond > 1
        if self.shorten_cond_schedule:
            self.make_cond_schedule()

    def instantiate_first_stage(self, config: Any) -> None:
        """Build the autoencoder, frozen: eval mode that ``train()`` cannot undo, no gradients."""
        require_checkpoint_file(config, "model.params.first_stage_config")
        self.first_stage_model = freeze_module(instantiate_from_config(config, name="model.params.first_stage_config"))

    def instantiate_cond_stage(self, config: Any) -> None:
        """Build the conditioning model (frozen unless ``cond_stage_trainable``) or resolve a sentinel."""
        where = "model.params.cond_stage_config"
        if self.cond_stage_trainable:
            if isinstance(config, str) and config in SENTINELS:
                raise SettingError(f"{where} = {config!r} cannot be combined with cond_stage_trainable: true.")
            require_checkpoint_file(config, where)
            self.cond_stage_model = instantiate_from_config(config, name=where)
        elif config == "__is_first_stage__":
            logger.info("Using first stage also as cond stage.")
            self.cond_stage_model = self.first_stage_model
        elif config == "__is_unconditional__":
            logger.info("Training %s as an unconditional model.", type(self).__name__)
            self.cond_stage_model = None
        else:
            require_checkpoint_file(config, where)
            self.cond_stage_model = freeze_module(instantiate_from_config(config, name=where))

    @torch.no_grad()
    def on_train_batch_start(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """With ``scale_by_std``, set scale_factor = 1 / std(z) of the very first training batch's latents, on
        every rank. ``dataloader_idx`` (a Lightning 1 hook argument) is accepted and unused."""
        first_batch = self.current_epoch == 0 and self.global_step == 0 and batch_idx == 0
        if not (self.scale_by_std and first_batch and not self.restarted_from_ckpt):
            return
        if float(self.scale_factor) != 1.0:
            raise SettingError("scale_by_std: true rescales the latents itself; leave scale_factor at 1.0.")
        z = cached_inputs.first_stage_latents(self, batch, self.first_stage_key)
        del self.scale_factor
        self.register_buffer("scale_factor", 1.0 / z.flatten().std())
        logger.info("scale_by_std: setting self.scale_factor to %s", float(self.scale_factor))

    # ---- first and conditioning stages ---------------------------------------------------------------------

    def get_first_stage_encoding(self, encoder_posterior: Any) -> torch.Tensor:
        """z = scale_factor · (a draw from the posterior, or the encoder's tensor output)."""
        match encoder_posterior:
            case DiagonalGaussianDistribution():
                latent = encoder_posterior.sample()
            case torch.Tensor():
                latent = encoder_posterior
            case _:
                raise NotImplementedError(
                    f"the first stage's encode() gave a {type(encoder_posterior).__name__}; LatentDiffusion needs a "
                    "DiagonalGaussianDistribution or a tensor of latents."
                )
        return latent * self.scale_factor

    def get_learned_conditioning(self, c: Any) -> Any:
        """τ(c): ``cond_stage_forward`` if set, else the model's ``encode`` (a posterior gives its mode) or call."""
        if self.cond_stage_forward is not None:
            method = getattr(self.cond_stage_model, self.cond_stage_forward, None)
            if not callable(method):
                raise SettingError(
                    f"cond_stage_forward = {self.cond_stage_forward!r}: "
                    f"{type(self.cond_stage_model).__name__} has no such method."
                )
            return method(c)
        encode = getattr(self.cond_stage_model, "encode", None)
        if callable(encode):
            c = encode(c)
            return c.mode() if isinstance(c, DiagonalGaussianDistribution) else c
        return self.cond_stage_model(c)

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> Any:
        """The first stage's ``encode(x)``: a DiagonalGaussianDistribution (KL) or a tensor (VQ, identity)."""
        if patch_folding.patch_distributed(self):
            return patch_folding.encode_patchwise(self, x)
        return self.first_stage_model.encode(x)

    def _decode(self, z: torch.Tensor, predict_cids: bool, force_not_quantize: bool) -> torch.Tensor:
        """x = D(z / scale_factor). With ``predict_cids`` z holds codebook logits ``(B, K, h, w)`` or indices
        ``(B, h, w)``, looked up first; decoding then skips the quantizer, as ``force_not_quantize`` does."""
        if predict_cids:
            indices = torch.argmax(z.exp(), dim=1) if z.dim() == 4 else z
            entries = self.first_stage_model.quantize.get_codebook_entry(indices.long(), shape=None)  # (B, h, w, C)
            z = rearrange(entries, "b h w c -> b c h w").contiguous()
        latents = (1.0 / self.scale_factor) * z
        skip_quantizer = predict_cids or force_not_quantize
        if patch_folding.patch_distributed(self):
            return patch_folding.decode_patchwise(self, latents, force_not_quantize=skip_quantizer)
        is_vq = isinstance(self.first_stage_model, VQModelInterface)
        return self.first_stage_model.decode(latents, **({"force_not_quantize": skip_quantizer} if is_vq else {}))

    @torch.no_grad()
    def decode_first_stage(
        self, z: torch.Tensor, predict_cids: bool = False, force_not_quantize: bool = False
    ) -> torch.Tensor:
        """x = D(z / scale_factor); ``predict_cids`` reads z as codebook logits/indices (VQ first stages)."""
        return self._decode(z, predict_cids, force_not_quantize)

    def differentiable_decode_first_stage(
        self, z: torch.Tensor, predict_cids: bool = False, force_not_quantize: bool = False
    ) -> torch.Tensor:
        """:meth:`decode_first_stage` with gradients."""
        return self._decode(z, predict_cids, force_not_quantize)

    @torch.no_grad()
    def get_input(
        self,
        batch: Mapping[str, Any],
        k: str,
        return_first_stage_outputs: bool = False,
        force_c_encode: bool = False,
        cond_key: str | None = None,
        return_original_cond: bool = False,
        bs: int | None = None,
        return_x: bool = False,
    ) -> list[Any]:
        """``[z, c]`` (+ ``x, xrec`` with ``return_first_stage_outputs``, + ``x`` with ``return_x``, + ``xc`` with
        ``return_original_cond``, in that order as in SD 2.x).

        z ``(B, C_z, h, w)`` are the scaled latents of ``batch[k]``; c is the encoded conditioning (raw when the
        conditioner is trainable, unless ``force_c_encode``), None for unconditional models. A batch from a latent
        cache skips the encoders (:mod:`~ldm.models.diffusion.cached_inputs`).
        """
        if cached_inputs.has_cached_latents(batch):
            return cached_inputs.cached_get_input(
                self, batch, return_first_stage_outputs, force_c_encode, cond_key, return_original_cond, bs, return_x
            )
        x = images_channels_first(batch[k])
        if bs is not None:
            x = x[:bs]
        x = x.to(self.device)
        z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()

        c = xc = None
        if self.model.conditioning_key is not None and not self.force_null_conditioning:
            cond_key = default(cond_key, self.cond_stage_key)
            xc = cached_inputs.conditioning_input(self, batch, cond_key, x)
            if not self.cond_stage_trainable or force_c_encode:
                c = self.get_learned_conditioning(xc if isinstance(xc, (dict, list)) else xc.to(self.device))
            else:
                c = xc
            if bs is not None:
                c = c[:bs]

        out = [z, c]
        if return_first_stage_outputs:
            out.extend([x, self.decode_first_stage(z)])
        if return_x:
            out.append(x)
        if return_original_cond:
            out.append(xc)
        return out

    # ---- training ------------------------------------------------------------------------------------------

    def shared_step(self, batch: Mapping[str, Any], **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, c = self.get_input(batch, self.first_stage_key)
        return self(x, c)

    def _noised_cond(self, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """With ``num_timesteps_cond > 1``: the conditioning diffused to step ``cond_ids[t]``."""
        if self.model.conditioning_key == "hybrid":
            raise SettingError("num_timesteps_cond > 1 does not support conditioning_key 'hybrid'.")
        tc = self.cond_ids.to(t.device)[t]
        return self.q_sample(x_start=cond, t=tc, noise=torch.randn_like(cond.float()))

    def forward(self, x: torch.Tensor, c: Any, *args, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss at a uniformly drawn t per sample; encodes c first when the conditioner is trained."""
        t = random_timesteps(x.shape[0], self.num_timesteps, self.device)
        if self.model.conditioning_key is not None:
            if c is None:
                key = self.model.conditioning_key
                raise SettingError(f"conditioning_key is {key!r} but no conditioning was given; pass c.")
            if self.cond_stage_trainable:
                c = self.get_learned_conditioning(c)
            if self.shorten_cond_schedule:
                c = self._noised_cond(c, t)
        return self.p_losses(x, c, t, *args, **kwargs)

    def _rescale_annotations(
        self, bboxes: Sequence[Sequence[float]], crop_coordinates: Sequence[float]
    ) -> list[tuple[float, float, float, float]]:
        """Bounding boxes relative to a crop, see :func:`~ldm.models.diffusion.conditioning.rescale_bboxes`."""
        return rescale_bboxes(bboxes, crop_coordinates)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any, return_ids: bool = False) -> Any:
        """ε̂ or x̂_0 ``(B, C, h, w)``; a tensor/list ``cond`` goes in as ``c_concat`` or ``c_crossattn``.

        With ``split_input_params`` set, the denoiser runs on overlapping patches (no ``return_ids`` then).
        """
        cond = as_wrapper_kwargs(cond, self.model.conditioning_key)
        if hasattr(self, "split_input_params"):
            if return_ids:
                raise NotImplementedError("apply_model: return_ids cannot be combined with split_input_params.")
            return patch_folding.apply_model_patchwise(self, x_noisy, t, cond)
        x_recon = self.model(x_noisy, t, **cond)
        if isinstance(x_recon, tuple) and not return_ids:
            return x_recon[0]
        return x_recon

    def p_losses(
        self, x_start: torch.Tensor, cond: Any, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """loss = l_simple_weight · mean(w_t L/e^{logvar_t} + logvar_t) + original_elbo_weight · mean(lvlb_weights[t]
        L), w_t the min-SNR weight (1 unless ``snr_gamma``; ε, x_t and w_t from :meth:`DDPM.objective_losses`).

        Logged: ``{prefix}/loss_simple`` (mean w_t L), ``/loss_gamma`` and ``logvar`` (when ``learn_logvar``),
        ``/loss_vlb``, ``/loss``, and with ``snr_gamma`` ``/snr_weight`` and ``/loss_simple_unweighted``; prefix
        ``train`` or ``val`` by ``self.training``.
        """
        model_fn = lambda x_t, steps: self.apply_model(x_t, steps, cond)
        terms = self.objective_losses(model_fn, x_start, t, noise, logvar=self.logvar)
        prefix = self._log_prefix()
        logs = {f"{prefix}/loss_simple": terms["simple"].mean(), **self.objective_logs(terms, prefix)}
        if self.learn_logvar:
            logs[f"{prefix}/loss_gamma"] = terms["gamma"].mean()
            logs["logvar"] = self.logvar.data.mean()
        logs[f"{prefix}/loss_vlb"] = terms["vlb"].mean()
        loss = self.l_simple_weight * terms["gamma"].mean() + self.original_elbo_weight * logs[f"{prefix}/loss_vlb"]
        logs[f"{prefix}/loss"] = loss
        return loss, logs

    # ---- ancestral sampling --------------------------------------------------------------------------------

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
        """(mean, β̃_t, log β̃_t) of p(x_{t−1} | x_t, c), + x̂_0 with ``return_x0``.

        x̂_0 is clamped to [-1, 1] with ``clip_denoised`` and snapped to the codebook with ``quantize_denoised``;
        ``score_corrector.modify_score`` may adjust ε̂ first.
        """
        if return_codebook_ids:
            raise DeprecationWarning("return_codebook_ids is no longer supported.")
        model_output = ancestral.conditioned_model_fn(self, c, score_corrector, corrector_kwargs)(x, t)
        snap = ancestral.codebook_snap(self) if quantize_denoised else None
        step = self.diffusion.p_mean_variance(model_output, x, t, clip_denoised, snap)
        moments = (step.mean, step.variance, step.log_variance)
        return (*moments, step.prediction.x0) if return_x0 else moments

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
        """x_{t−1} = μ + exp(½ log β̃_t) · temperature · z (no noise at t = 0); with ``return_x0`` also x̂_0."""
        mean, _, log_variance, x0 = self.p_mean_variance(
            x, c, t, clip_denoised, return_codebook_ids, quantize_denoised, True, score_corrector, corrector_kwargs
        )
        noise = noise_like(x.shape, x.device, repeat_noise, generator=generator, dtype=x.dtype)
        x_prev = self.diffusion.draw(mean, log_variance, t, noise, temperature, noise_dropout)
        return (x_prev, x0) if return_x0 else x_prev

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

        ``shape`` is ``(C, H, W)`` when ``batch_size`` is given, else ``(B, C, H, W)``.
        """
        shape = [batch_size, *shape] if batch_size is not None else list(shape)
        return ancestral.ancestral_chain(
            self,
            take_batch(cond, shape[0]),
            ancestral.initial_latents(self, shape, x_T, generator),
            ancestral.step_count(self, None, start_T),
            record="x0",
            log_every_t=log_every_t or self.log_every_t,
            progress="Progressive Generation" if verbose else None,
            quantize_denoised=quantize_denoised,
            mask=mask,
            x0=x0,
            temperature=temperature,
            noise_dropout=noise_dropout,
            score_corrector=score_corrector,
            corrector_kwargs=corrector_kwargs,
            callback=callback,
            img_callback=img_callback,
            generator=generator,
        )

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
        those regions); ``img_callback(img, i)`` and ``callback(i)`` run after each step.
        """
        sample, intermediates = ancestral.ancestral_chain(
            self,
            cond,
            ancestral.initial_latents(self, shape, x_T, generator),
            ancestral.step_count(self, timesteps, start_T),
            record="x_t",
            log_every_t=log_every_t or self.log_every_t,
            progress="Sampling t" if verbose else None,
            quantize_denoised=quantize_denoised,
            mask=mask,
            x0=x0,
            callback=callback,
            img_callback=img_callback,
            generator=generator,
        )
        return (sample, intermediates) if return_intermediates else sample

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
        shape = (batch_size, self.channels, self.image_size, self.image_size) if shape is None else shape
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
    def get_unconditional_conditioning(self, batch_size: int, null_label: Any = None) -> Any:
        """τ(null_label) repeated to ``batch_size`` (see :func:`~ldm.models.diffusion.conditioning.
        unconditional_conditioning`)."""
        return unconditional_conditioning(self, batch_size, null_label)

    @torch.no_grad()
    def sample_log(self, cond: Any, batch_size: int, ddim: bool, ddim_steps: int, **kwargs) -> tuple[torch.Tensor, Any]:
        """Samples and intermediates by DDIM (``ddim``, ``ddim_steps`` steps) or by :meth:`sample`.

        ``quantize_denoised`` snaps x̂_0 to the codebook on both paths (DDIM calls it ``quantize_x0``).
        """
        if not ddim:
            return self.sample(cond=cond, batch_size=batch_size, return_intermediates=True, **kwargs)
        from ldm.models.diffusion.ddim import DDIMSampler

        if "quantize_denoised" in kwargs:
            kwargs["quantize_x0"] = kwargs.pop("quantize_denoised")

        shape = (self.channels, self.image_size, self.image_size)
        return DDIMSampler(self).sample(ddim_steps, batch_size, shape, cond, verbose=False, **kwargs)

    # ---- image logs ----------------------------------------------------------------------------------------

    def _get_denoise_row_from_list(
        self, samples: Sequence[torch.Tensor], desc: str = "", force_no_decoder_quantization: bool = False
    ) -> torch.Tensor:
        """Each latent step decoded, laid out as a grid (a row per sample)."""
        return image_logging.denoise_row(self, samples, desc, force_no_decoder_quantization)

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 8, n_row: int = 4, *args, **kwargs) -> dict[str, Any]:
        """Inputs, reconstructions, conditioning, diffusion row, samples (EMA), in/outpainting, progressives;
        see :func:`~ldm.models.diffusion.image_logging.log_latent_images` for the options."""
        return image_logging.log_latent_images(self, batch, N, n_row, *args, **kwargs)

    @torch.no_grad()
    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """A ``(B, C, H, W)`` map with C > 3 → RGB in [-1, 1] through a fixed random projection."""
        return image_logging.to_rgb(self, x)

    # ---- patch-wise processing (split_input_params) --------------------------------------------------------

    def meshgrid(self, h: int, w: int) -> torch.Tensor:
        """``(h, w, 2)`` integer coordinates ``[y, x]`` of every pixel."""
        return patch_folding.meshgrid(h, w)

    def delta_border(self, h: int, w: int) -> torch.Tensor:
        """``(h, w)`` distance to the nearest border in units of the side."""
        return patch_folding.delta_border(h, w)

    def get_weighting(self, h: int, w: int, Ly: int, Lx: int, device: torch.device | str) -> torch.Tensor:
        """Blend weights ``(1, h·w, Ly·Lx)`` of the patches."""
        return patch_folding.get_weighting(self.split_input_params, h, w, Ly, Lx, device)

    def get_fold_unfold(
        self, x: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int], uf: int = 1, df: int = 1
    ) -> tuple[nn.Fold, nn.Unfold, torch.Tensor, torch.Tensor]:
        """``(fold, unfold, normalization, weighting)`` for patches of ``x``."""
        return patch_folding.get_fold_unfold(self.split_input_params, x, kernel_size, stride, uf, df)

    def _conditioner_parameters(self) -> list[torch.Tensor]:
        if not self.cond_stage_trainable:
            return []
        logger.info("%s: Also optimizing conditioner params!", type(self).__name__)
        return list(self.cond_stage_model.parameters())


def _wrapper_conditioning_key(
    conditioning_key: str | None, concat_mode: bool, cond_stage_config: Any, force_null_conditioning: bool = False
) -> str | None:
    """How the denoiser takes the conditioning: none for unconditional models (unless ``force_null_conditioning``),
    else ``conditioning_key``, which defaults to ``concat`` (``concat_mode``) or ``crossattn``."""
    if cond_stage_config == "__is_unconditional__" and not force_null_conditioning:
        return None
    if conditioning_key is not None:
        return conditioning_key
    return "concat" if concat_mode else "crossattn"


def _num_downs(first_stage_config: Any) -> int:
    """len(ddconfig.ch_mult) − 1 of a first-stage config, 0 when it has none."""
    try:
        return len(first_stage_config["params"]["ddconfig"]["ch_mult"]) - 1
    except (KeyError, TypeError):
        return 0
