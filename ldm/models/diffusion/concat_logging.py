"""``log_images`` of the SD 2.x models whose conditioning is a dict (inpainting, depth, x4 upscaling, unCLIP).

One function builds the common part (inputs, reconstruction, conditioning, diffusion row, samples, guided samples);
each model adds its own extra images (the masked image, the depth map, the low-res input).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch

from ldm.models.diffusion.image_logging import conditioning_log, logged_timesteps, rows_to_grid


def unconditional_dict(model: Any, cond: Mapping[str, Any], batch_size: int, null_label: Any) -> dict[str, Any]:
    """The guidance counterpart of a dict conditioning: ``c_crossattn`` replaced by τ(null_label) (the empty
    caption when ``null_label`` is None), every other entry (concat images, ``c_adm``) kept as it is."""
    label = [""] if null_label is None else null_label
    uncond = dict(cond)
    uncond["c_crossattn"] = [model.get_unconditional_conditioning(batch_size, label)]
    return uncond


@torch.no_grad()
def log_dict_conditioned_images(
    model: Any,
    batch: Mapping[str, Any],
    z: torch.Tensor,
    cond: Mapping[str, Any],
    x: torch.Tensor,
    xrec: torch.Tensor,
    xc: Any,
    N: int = 8,
    n_row: int = 4,
    sample: bool = True,
    ddim_steps: int | None = 200,
    ddim_eta: float = 1.0,
    plot_diffusion_rows: bool = True,
    unconditional_guidance_scale: float = 1.0,
    unconditional_guidance_label: Any = None,
    use_ema_scope: bool = True,
) -> dict[str, Any]:
    """``inputs``, ``reconstruction``, ``conditioning``, ``diffusion_row``, ``samples`` and, for a guidance scale
    w > 1, ``samples_cfg_scale_{w:.2f}``; ``z`` ``(B, C, h, w)`` and ``cond`` as ``get_input`` gave them."""
    N, n_row = min(x.shape[0], N), min(x.shape[0], n_row)
    log: dict[str, Any] = {"inputs": x, "reconstruction": xrec}
    if model.cond_stage_model is not None and model.model.conditioning_key is not None:
        log.update(conditioning_log(model, batch, cond["c_crossattn"][0], x, xc))
    if plot_diffusion_rows:
        rows = z[:n_row]
        noised = []
        for step in logged_timesteps(model.num_timesteps, model.log_every_t):
            t = torch.full((n_row,), step, device=model.device, dtype=torch.long)
            noised.append(model.decode_first_stage(model.q_sample(rows, t, torch.randn_like(rows))))
        log["diffusion_row"] = rows_to_grid(noised)
    scope = model.ema_scope if use_ema_scope else (lambda *_: nullcontext())
    settings = {"batch_size": N, "ddim": ddim_steps is not None, "ddim_steps": ddim_steps, "eta": ddim_eta}
    if sample:
        with scope("Sampling"):
            samples, _ = model.sample_log(cond=dict(cond), **settings)
        log["samples"] = model.decode_first_stage(samples)
    if unconditional_guidance_scale > 1.0:
        uncond = unconditional_dict(model, cond, N, unconditional_guidance_label)
        with scope("Sampling with classifier-free guidance"):
            samples, _ = model.sample_log(
                cond=dict(cond),
                unconditional_guidance_scale=unconditional_guidance_scale,
                unconditional_conditioning=uncond,
                **settings,
            )
        log[f"samples_cfg_scale_{unconditional_guidance_scale:.2f}"] = model.decode_first_stage(samples)
    return log

