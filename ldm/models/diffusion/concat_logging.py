"""``log_images`` of the SD 2.x models whose conditioning is a dict (inpainting, depth, x4 upscaling, unCLIP).

:class:`DictConditionedLatentDiffusion` holds the one ``log_images`` of the concat-conditioned models (inputs,
reconstruction, conditioning, diffusion row, samples, guided samples); each model supplies, through its
``logged_inputs``, the latents and images to log and its own extra images (the masked image, the depth map, the
low-res input). :func:`guided_samples` is the classifier-free guidance row, shared with unCLIP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import torch

from ldm.models.diffusion.image_logging import conditioning_log, diffusion_row, select_keys
from ldm.models.diffusion.latent_diffusion import LatentDiffusion


def unconditional_dict(model: Any, cond: Mapping[str, Any], batch_size: int, null_label: Any) -> dict[str, Any]:
    """The guidance counterpart of a dict conditioning: ``c_crossattn`` replaced by τ(null_label) (the empty
    caption when ``null_label`` is None), every other entry (concat images, ``c_adm``) kept as it is."""
    label = [""] if null_label is None else null_label
    uncond = dict(cond)
    uncond["c_crossattn"] = [model.get_unconditional_conditioning(batch_size, label)]
    return uncond


@torch.no_grad()
def guided_samples(
    model: Any,
    cond: Mapping[str, Any],
    batch_size: int,
    scale: float,
    null_label: Any,
    scope: AbstractContextManager[Any],
    **settings: Any,
) -> torch.Tensor:
    """Decoded samples under classifier-free guidance ε̃ = ε(z_t, ∅) + w (ε(z_t, c) − ε(z_t, ∅)), w = ``scale``,
    where ∅ is :func:`unconditional_dict` of ``cond``; drawn inside ``scope`` by ``model.sample_log`` with
    ``settings`` (``ddim``, ``ddim_steps``, ``eta``). Returns ``(batch_size, C, H, W)`` images."""
    uncond = unconditional_dict(model, cond, batch_size, null_label)
    with scope:
        latents, _ = model.sample_log(
            cond=dict(cond),
            batch_size=batch_size,
            unconditional_guidance_scale=scale,
            unconditional_conditioning=uncond,
            **settings,
        )
    return model.decode_first_stage(latents)


class LoggedInputs(NamedTuple):
    """What ``log_images`` starts from: latents ``z`` ``(B, C, h, w)``, the dict conditioning, the input images
    ``x`` and their reconstruction, the raw conditioning ``xc``, and the model's own ``extra`` images."""

    z: torch.Tensor
    cond: dict[str, Any]
    x: torch.Tensor
    xrec: torch.Tensor
    xc: Any
    extra: dict[str, Any]


class DictConditionedLatentDiffusion(LatentDiffusion):
    """LatentDiffusion with a dict conditioning {``c_concat``, ``c_crossattn``, ``c_adm``, ...}: the image log of
    the inpainting, depth and x4 upscaling models. Subclasses implement :meth:`logged_inputs`."""

    def logged_inputs(self, batch: Mapping[str, Any], N: int) -> LoggedInputs:
        """The first ``N`` samples' latents, conditioning, images and extra logged images."""
        raise NotImplementedError(f"{type(self).__name__} must define logged_inputs(batch, N) to log images.")

    @torch.no_grad()
    def log_images(
        self,
        batch: Mapping[str, Any],
        N: int = 8,
        n_row: int = 4,
        sample: bool = True,
        ddim_steps: int | None = 200,
        ddim_eta: float = 1.0,
        return_keys: Sequence[str] | None = None,
        plot_diffusion_rows: bool = True,
        unconditional_guidance_scale: float = 1.0,
        unconditional_guidance_label: Any = None,
        use_ema_scope: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``inputs``, ``reconstruction``, ``conditioning``, ``diffusion_row`` (q(z_t | z_0) decoded at the logged
        steps), ``samples`` and, for a guidance scale w > 1, ``samples_cfg_scale_{w:.2f}`` (the unconditional
        branch keeps every entry but the text), then the model's extra images."""
        z, cond, x, xrec, xc, extra = self.logged_inputs(batch, N)
        N, n_row = min(x.shape[0], N), min(x.shape[0], n_row)
        log: dict[str, Any] = {"inputs": x, "reconstruction": xrec}
        if self.cond_stage_model is not None and self.model.conditioning_key is not None:
            log.update(conditioning_log(self, batch, cond["c_crossattn"][0], x, xc))
        if plot_diffusion_rows:
            log["diffusion_row"] = diffusion_row(self, z[:n_row])
        scope = self.ema_scope if use_ema_scope else (lambda *_: nullcontext())
        settings = {"ddim": ddim_steps is not None, "ddim_steps": ddim_steps, "eta": ddim_eta}
        if sample:
            with scope("Sampling"):
                latents, _ = self.sample_log(cond=dict(cond), batch_size=N, **settings)
            log["samples"] = self.decode_first_stage(latents)
        if unconditional_guidance_scale > 1.0:
            log[f"samples_cfg_scale_{unconditional_guidance_scale:.2f}"] = guided_samples(
                self, cond, N, unconditional_guidance_scale, unconditional_guidance_label,
                scope("Sampling with classifier-free guidance"), **settings,
            )
        log.update(extra)
        return select_keys(log, return_keys)
