"""``LatentDiffusion``: DDPM on the latents of a frozen autoencoder, conditioned by a conditioning model.

Configs name it ``ldm.models.diffusion.ddpm.LatentDiffusion``; ``ddpm.py`` resolves that name to this module.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange

from ldm.models.autoencoder import VQModelInterface
from ldm.models.diffusion.conditioning import as_wrapper_kwargs, rescale_bboxes
from ldm.models.diffusion.ddpm import DDPM
from ldm.models.diffusion.diffusion_wrapper import freeze_module, require_checkpoint_file
from ldm.models.diffusion.image_logging import LatentImageLoggingMixin
from ldm.models.diffusion.latent_sampling import LatentSamplingMixin
from ldm.models.diffusion.patch_folding import PatchFoldingMixin
from ldm.models.diffusion.schedule import cond_schedule_ids
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import (
    SENTINELS,
    SettingError,
    default,
    instantiate_from_config,
    mean_flat,
    to_container,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------
# LatentDiffusion: diffusion on the latents of a frozen autoencoder, with a conditioning model
# --------------------------------------------------------------------------------------------------------


class LatentDiffusion(LatentSamplingMixin, LatentImageLoggingMixin, PatchFoldingMixin, DDPM):
    """DDPM on z = scale_factor · E(x), E a frozen first-stage autoencoder, conditioned on c = τ(y).

    ``cond_stage_config`` is a model config, ``"__is_first_stage__"`` (τ = E) or ``"__is_unconditional__"``.
    Other keyword arguments go to :class:`DDPM` (including the new ``ucg_training``). Patch-wise processing of
    large inputs follows ``self.split_input_params`` (:mod:`~ldm.models.diffusion.patch_folding`; new: it may also
    be passed as a keyword). ``get_input`` also reads ``cond_stage_key="txt"`` captions as a list (the original
    only did so for ``caption``); ``timesteps`` may be left at its default.
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
        *args,
        **kwargs,
    ):
        split_input_params = kwargs.pop("split_input_params", None)
        if kwargs.get("use_positional_encodings", False):
            raise NotImplementedError(
                "use_positional_encodings is not implemented for LatentDiffusion (the original lacks the latent "
                "shifts it needs); set it to false."
            )
        self.num_timesteps_cond = default(num_timesteps_cond, 1)
        self.scale_by_std = scale_by_std
        timesteps = kwargs.get("timesteps", 1000)
        if self.num_timesteps_cond > timesteps:
            raise SettingError(
                f"num_timesteps_cond ({self.num_timesteps_cond}) must not exceed timesteps ({timesteps})."
            )
        if conditioning_key is None:
            conditioning_key = "concat" if concat_mode else "crossattn"
        if cond_stage_config == "__is_unconditional__":
            conditioning_key = None
        ckpt_path = kwargs.pop("ckpt_path", None)
        ignore_keys = kwargs.pop("ignore_keys", ())
        super().__init__(*args, conditioning_key=conditioning_key, **kwargs)
        self.concat_mode = concat_mode
        self.cond_stage_trainable = cond_stage_trainable
        self.cond_stage_key = cond_stage_key
        self.num_downs = _num_downs(first_stage_config)
        if not scale_by_std:
            self.scale_factor = scale_factor
        else:
            self.register_buffer("scale_factor", torch.tensor(scale_factor, device="cpu"))
        self.instantiate_first_stage(first_stage_config)
        self.instantiate_cond_stage(cond_stage_config)
        self.cond_stage_forward = cond_stage_forward
        self.clip_denoised = False
        self.bbox_tokenizer = None
        if split_input_params is not None:
            self.split_input_params = dict(to_container(split_input_params))

        self.restarted_from_ckpt = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys)
            self.restarted_from_ckpt = True

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
        """With ``scale_by_std``, set scale_factor = 1 / std(z) of the very first training batch's latents.

        ``dataloader_idx`` is the original (Lightning 1) hook argument, accepted and unused. Unlike the original,
        every rank computes the factor (the original did it on rank 0 only, leaving other ranks at 1).
        """
        first_batch = self.current_epoch == 0 and self.global_step == 0 and batch_idx == 0
        if not (self.scale_by_std and first_batch and not self.restarted_from_ckpt):
            return
        if float(self.scale_factor) != 1.0:
            raise SettingError("scale_by_std: true rescales the latents itself; leave scale_factor at 1.0.")
        x = DDPM.get_input(self, batch, self.first_stage_key).to(self.device)
        z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()
        del self.scale_factor
        self.register_buffer("scale_factor", 1.0 / z.flatten().std())
        logger.info("scale_by_std: setting self.scale_factor to %s", float(self.scale_factor))

    # ---- first and conditioning stages ---------------------------------------------------------------------

    def get_first_stage_encoding(self, encoder_posterior: Any) -> torch.Tensor:
        """z = scale_factor · (a draw from the posterior, or the encoder's tensor output)."""
        if isinstance(encoder_posterior, DiagonalGaussianDistribution):
            z = encoder_posterior.sample()
        elif isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        else:
            raise NotImplementedError(f"encoder_posterior of type '{type(encoder_posterior)}' not yet implemented")
        return self.scale_factor * z

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
        if self._patch_distributed():
            return self._encode_patchwise(x)
        return self.first_stage_model.encode(x)

    def _decode(self, z: torch.Tensor, predict_cids: bool, force_not_quantize: bool) -> torch.Tensor:
        if predict_cids:
            if z.dim() == 4:
                z = torch.argmax(z.exp(), dim=1).long()
            z = self.first_stage_model.quantize.get_codebook_entry(z, shape=None)
            z = rearrange(z, "b h w c -> b c h w").contiguous()
        z = 1.0 / self.scale_factor * z
        if self._patch_distributed():
            return self._decode_patchwise(z, force_not_quantize=predict_cids or force_not_quantize)
        if isinstance(self.first_stage_model, VQModelInterface):
            return self.first_stage_model.decode(z, force_not_quantize=predict_cids or force_not_quantize)
        return self.first_stage_model.decode(z)

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
    ) -> list[Any]:
        """``[z, c]`` (+ ``x, xrec`` with ``return_first_stage_outputs``, + ``xc`` with ``return_original_cond``).

        z ``(B, C_z, h, w)`` are the scaled latents of ``batch[k]``; c is the encoded conditioning (raw when the
        conditioner is trainable, unless ``force_c_encode``), None for unconditional models.
        """
        x = DDPM.get_input(self, batch, k)
        if bs is not None:
            x = x[:bs]
        x = x.to(self.device)
        z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()

        c = xc = None
        if self.model.conditioning_key is not None:
            cond_key = default(cond_key, self.cond_stage_key)
            if cond_key == self.first_stage_key:
                xc = x
            elif cond_key in ("caption", "txt", "coordinates_bbox"):
                xc = batch[cond_key]
            elif cond_key == "class_label":
                xc = batch
            else:
                xc = DDPM.get_input(self, batch, cond_key).to(self.device)
            if not self.cond_stage_trainable or force_c_encode:
                c = self.get_learned_conditioning(xc if isinstance(xc, (dict, list)) else xc.to(self.device))
            else:
                c = xc
            if bs is not None:
                c = c[:bs]

        out = [z, c]
        if return_first_stage_outputs:
            out.extend([x, self.decode_first_stage(z)])
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
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=self.device).long()
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
            return self._apply_model_patchwise(x_noisy, t, cond)
        x_recon = self.model(x_noisy, t, **cond)
        if isinstance(x_recon, tuple) and not return_ids:
            return x_recon[0]
        return x_recon

    def p_losses(
        self, x_start: torch.Tensor, cond: Any, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """loss = l_simple_weight · mean(L/e^{logvar_t} + logvar_t) + original_elbo_weight · mean(lvlb_weights[t] L).

        Logged: ``{prefix}/loss_simple``, ``/loss_gamma`` and ``logvar`` (when ``learn_logvar``), ``/loss_vlb``,
        ``/loss``; prefix ``train`` or ``val`` by ``self.training``.
        """
        noise = default(noise, lambda: torch.randn_like(x_start))
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        model_output = self.apply_model(x_noisy, t, cond)
        prefix = "train" if self.training else "val"
        per_sample = mean_flat(self.get_loss(model_output, self._target(x_start, noise), mean=False))
        loss_dict = {f"{prefix}/loss_simple": per_sample.mean()}

        logvar_t = self.logvar.to(self.device)[t]
        loss = per_sample / torch.exp(logvar_t) + logvar_t
        if self.learn_logvar:
            loss_dict[f"{prefix}/loss_gamma"] = loss.mean()
            loss_dict["logvar"] = self.logvar.data.mean()
        loss = self.l_simple_weight * loss.mean()

        loss_vlb = (self.lvlb_weights[t] * per_sample).mean()
        loss_dict[f"{prefix}/loss_vlb"] = loss_vlb
        loss = loss + self.original_elbo_weight * loss_vlb
        loss_dict[f"{prefix}/loss"] = loss
        return loss, loss_dict

    def _conditioner_parameters(self) -> list[torch.Tensor]:
        if not self.cond_stage_trainable:
            return []
        logger.info("%s: Also optimizing conditioner params!", type(self).__name__)
        return list(self.cond_stage_model.parameters())


def _num_downs(first_stage_config: Any) -> int:
    """len(ddconfig.ch_mult) − 1 of a first-stage config, 0 when it has none."""
    try:
        return len(first_stage_config["params"]["ddconfig"]["ch_mult"]) - 1
    except (KeyError, TypeError):
        return 0
