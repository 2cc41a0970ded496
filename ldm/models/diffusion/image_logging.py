"""``log_images`` of the diffusion models: trajectory rows as grids, samples, in/outpainting, false colours."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from tqdm import tqdm

from ldm.image_io import make_grid
from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage
from ldm.util import isimage, ismap, log_txt_as_img

logger = logging.getLogger(__name__)


def logged_timesteps(num_timesteps: int, log_every_t: int) -> list[int]:
    """The steps a trajectory row shows: every ``log_every_t``-th one and the last, ``T − 1``."""
    return [t for t in range(num_timesteps) if t % log_every_t == 0 or t == num_timesteps - 1]


def rows_to_grid(steps: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """``n`` steps of ``(B, C, H, W)`` → one image grid with a row per sample and a column per step.

    Returns ``(C, B·(H + 2) + 2, n·(W + 2) + 2)`` as made by :func:`ldm.image_io.make_grid` with ``nrow=n``.
    """
    stacked = torch.stack(list(steps)) if not isinstance(steps, torch.Tensor) else steps
    n_steps = stacked.shape[0]
    return make_grid(rearrange(stacked, "n b c h w -> (b n) c h w"), nrow=n_steps)


def diffusion_row(model: Any, z_start: torch.Tensor) -> torch.Tensor:
    """The forward process of each latent of ``z_start`` ``(n, C, h, w)`` as a grid: D(z_t) for
    z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε at every :func:`logged_timesteps` step, a row per latent (ε drawn per step)."""
    decoded = []
    for step in logged_timesteps(model.num_timesteps, model.log_every_t):
        t = torch.full((z_start.shape[0],), step, device=model.device, dtype=torch.long)
        decoded.append(model.decode_first_stage(model.q_sample(z_start, t, torch.randn_like(z_start))))
    return rows_to_grid(decoded)


def colorize_map(x: torch.Tensor, colorize: torch.Tensor) -> torch.Tensor:
    """Project a ``(B, C, H, W)`` map with C > 3 to RGB with ``colorize`` ``(3, C, 1, 1)``, rescaled to [-1, 1]."""
    x = torch.nn.functional.conv2d(x.float(), weight=colorize)
    return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0


def select_keys(log: dict[str, torch.Tensor], return_keys: Sequence[str] | None) -> dict[str, torch.Tensor]:
    """Only ``return_keys`` of ``log``, unless none of them is there (then all of it)."""
    if not return_keys or not set(return_keys) & set(log):
        return log
    return {key: log[key] for key in return_keys}


def denoise_row(
    model: Any, samples: Sequence[torch.Tensor], desc: str = "", force_no_decoder_quantization: bool = False
) -> torch.Tensor:
    """Decode each latent step and lay them out with :func:`rows_to_grid`."""
    decoded = [
        model.decode_first_stage(zd.to(model.device), force_not_quantize=force_no_decoder_quantization)
        for zd in tqdm(samples, desc=desc)
    ]
    return rows_to_grid(decoded)


def conditioning_log(model: Any, batch: Mapping[str, Any], c: Any, x: torch.Tensor, xc: Any) -> dict[str, Any]:
    """``conditioning`` as an image (decoded, captions drawn as text, or the input image itself) and, for a
    many-channel map, ``original_conditioning`` in false colours."""
    log = {}
    if hasattr(model.cond_stage_model, "decode"):
        log["conditioning"] = model.cond_stage_model.decode(c)
    elif model.cond_stage_key in ("caption", "txt"):
        log["conditioning"] = log_txt_as_img((x.shape[2], x.shape[3]), batch[model.cond_stage_key])
    elif model.cond_stage_key == "class_label" and "human_label" in batch:
        log["conditioning"] = log_txt_as_img((x.shape[2], x.shape[3]), batch["human_label"])
    elif isimage(xc):
        log["conditioning"] = xc
    shown = log.get("conditioning", xc)
    if ismap(shown):
        log["original_conditioning"] = model.to_rgb(shown)
    return log


@torch.no_grad()
def log_latent_images(
    model: Any,
    batch: Mapping[str, Any],
    N: int = 8,
    n_row: int = 4,
    sample: bool = True,
    ddim_steps: int | None = 200,
    ddim_eta: float = 1.0,
    return_keys: Sequence[str] | None = None,
    quantize_denoised: bool = True,
    inpaint: bool = True,
    plot_denoise_rows: bool = False,
    plot_progressive_rows: bool = True,
    plot_diffusion_rows: bool = True,
    **kwargs,
) -> dict[str, torch.Tensor]:
    """Inputs, reconstructions, conditioning, diffusion row, samples (EMA), in/outpainting, progressives.

    ``samples_inpainting`` regenerates the centre of the latent (mask m = 0 there), ``samples_outpainting`` keeps
    the centre and regenerates the border (mask 1 − m).
    """
    use_ddim = ddim_steps is not None
    z, c, x, xrec, xc = model.get_input(
        batch,
        model.first_stage_key,
        return_first_stage_outputs=True,
        force_c_encode=True,
        return_original_cond=True,
        bs=N,
    )
    N = min(x.shape[0], N)
    n_row = min(x.shape[0], n_row)
    log = {"inputs": x, "reconstruction": xrec}
    if model.model.conditioning_key is not None:
        log.update(conditioning_log(model, batch, c, x, xc))

    if plot_diffusion_rows:
        log["diffusion_row"] = diffusion_row(model, z[:n_row])

    sample_args = {"cond": c, "batch_size": N, "ddim": use_ddim, "ddim_steps": ddim_steps, "eta": ddim_eta}
    if sample:
        with model.ema_scope("Plotting"):
            samples, z_denoise_row = model.sample_log(**sample_args)
        log["samples"] = model.decode_first_stage(samples)
        if plot_denoise_rows:
            log["denoise_row"] = model._get_denoise_row_from_list(z_denoise_row)

        if quantize_denoised and not isinstance(model.first_stage_model, (AutoencoderKL, IdentityFirstStage)):
            with model.ema_scope("Plotting Quantized Denoised"):
                samples, _ = model.sample_log(**sample_args, quantize_denoised=True)
            log["samples_x0_quantized"] = model.decode_first_stage(samples.to(model.device))

        if inpaint:
            h, w = z.shape[2], z.shape[3]
            mask = torch.ones(N, 1, h, w, device=model.device)
            mask[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 0.0
            with model.ema_scope("Plotting Inpaint"):
                samples, _ = model.sample_log(**sample_args, x0=z[:N], mask=mask)
            log["samples_inpainting"] = model.decode_first_stage(samples.to(model.device))
            log["mask"] = mask
            with model.ema_scope("Plotting Outpaint"):
                samples, _ = model.sample_log(**sample_args, x0=z[:N], mask=1.0 - mask)
            log["samples_outpainting"] = model.decode_first_stage(samples.to(model.device))

    if plot_progressive_rows:
        logger.info(
            "log_images: the progressive row runs ancestral sampling over all %d timesteps (%d model calls on %d "
            "samples); set plot_progressive_rows: false in the ImageLogger's log_images_kwargs to skip it",
            model.num_timesteps, model.num_timesteps, N,
        )
        with model.ema_scope("Plotting Progressives"):
            _, progressives = model.progressive_denoising(
                c, shape=(model.channels, model.image_size, model.image_size), batch_size=N
            )
        log["progressive_row"] = model._get_denoise_row_from_list(progressives, desc="Progressive Generation")
    return select_keys(log, return_keys)


def to_rgb(model: Any, x: torch.Tensor) -> torch.Tensor:
    """A ``(B, C, H, W)`` map with C > 3 → RGB in [-1, 1] through a fixed random projection."""
    x = x.float()
    if not hasattr(model, "colorize"):
        model.colorize = torch.randn(3, x.shape[1], 1, 1).to(x)
    return colorize_map(x, model.colorize)
