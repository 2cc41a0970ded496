"""``log_images`` of the diffusion models: trajectory rows as grids, samples, in/outpainting, false colours."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from tqdm import tqdm

from ldm.image_io import make_grid
from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage
from ldm.util import isimage, ismap, log_txt_as_img


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


def colorize_map(x: torch.Tensor, colorize: torch.Tensor) -> torch.Tensor:
    """Project a ``(B, C, H, W)`` map with C > 3 to RGB with ``colorize`` ``(3, C, 1, 1)``, rescaled to [-1, 1]."""
    x = torch.nn.functional.conv2d(x.float(), weight=colorize)
    return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0


def select_keys(log: dict[str, torch.Tensor], return_keys: Sequence[str] | None) -> dict[str, torch.Tensor]:
    """Only ``return_keys`` of ``log``, unless none of them is there (then all of it)."""
    if not return_keys or not set(return_keys) & set(log):
        return log
    return {key: log[key] for key in return_keys}


class LatentImageLoggingMixin:
    """``log_images`` of ``LatentDiffusion``: everything decoded to image space by the first stage."""

    def _get_denoise_row_from_list(
        self, samples: Sequence[torch.Tensor], desc: str = "", force_no_decoder_quantization: bool = False
    ) -> torch.Tensor:
        """Decode each latent step and lay them out with :func:`rows_to_grid`."""
        decoded = [
            self.decode_first_stage(zd.to(self.device), force_not_quantize=force_no_decoder_quantization)
            for zd in tqdm(samples, desc=desc)
        ]
        return rows_to_grid(decoded)

    def _conditioning_log(self, batch: Mapping[str, Any], c: Any, x: torch.Tensor, xc: Any) -> dict[str, Any]:
        log = {}
        if hasattr(self.cond_stage_model, "decode"):
            log["conditioning"] = self.cond_stage_model.decode(c)
        elif self.cond_stage_key in ("caption", "txt"):
            log["conditioning"] = log_txt_as_img((x.shape[2], x.shape[3]), batch[self.cond_stage_key])
        elif self.cond_stage_key == "class_label" and "human_label" in batch:
            log["conditioning"] = log_txt_as_img((x.shape[2], x.shape[3]), batch["human_label"])
        elif isimage(xc):
            log["conditioning"] = xc
        shown = log.get("conditioning", xc)  # the original tests what it shows, not the raw input
        if ismap(shown):
            log["original_conditioning"] = self.to_rgb(shown)
        return log

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
        quantize_denoised: bool = True,
        inpaint: bool = True,
        plot_denoise_rows: bool = False,
        plot_progressive_rows: bool = True,
        plot_diffusion_rows: bool = True,
        **kwargs,
    ) -> dict[str, torch.Tensor]:
        """Inputs, reconstructions, conditioning, diffusion row, samples (EMA), in/outpainting, progressives.

        Kept differences from the original: ``samples_outpainting`` keeps the centre and generates the border
        (mask 1 − m; the original reused the inpainting mask m); ``conditioning`` is also drawn for ``txt``
        captions and skipped for ``class_label`` batches without ``human_label`` (the original raised KeyError).
        """
        use_ddim = ddim_steps is not None
        z, c, x, xrec, xc = self.get_input(
            batch,
            self.first_stage_key,
            return_first_stage_outputs=True,
            force_c_encode=True,
            return_original_cond=True,
            bs=N,
        )
        N = min(x.shape[0], N)
        n_row = min(x.shape[0], n_row)
        log = {"inputs": x, "reconstruction": xrec}
        if self.model.conditioning_key is not None:
            log.update(self._conditioning_log(batch, c, x, xc))

        if plot_diffusion_rows:
            z_start = z[:n_row]
            diffusion_row = []
            for step in logged_timesteps(self.num_timesteps, self.log_every_t):
                t = torch.full((n_row,), step, device=self.device, dtype=torch.long)
                z_noisy = self.q_sample(x_start=z_start, t=t, noise=torch.randn_like(z_start))
                diffusion_row.append(self.decode_first_stage(z_noisy))
            log["diffusion_row"] = rows_to_grid(diffusion_row)

        sample_args = {"cond": c, "batch_size": N, "ddim": use_ddim, "ddim_steps": ddim_steps, "eta": ddim_eta}
        if sample:
            with self.ema_scope("Plotting"):
                samples, z_denoise_row = self.sample_log(**sample_args)
            log["samples"] = self.decode_first_stage(samples)
            if plot_denoise_rows:
                log["denoise_row"] = self._get_denoise_row_from_list(z_denoise_row)

            if quantize_denoised and not isinstance(self.first_stage_model, (AutoencoderKL, IdentityFirstStage)):
                with self.ema_scope("Plotting Quantized Denoised"):
                    samples, _ = self.sample_log(**sample_args, quantize_denoised=True)
                log["samples_x0_quantized"] = self.decode_first_stage(samples.to(self.device))

            if inpaint:
                h, w = z.shape[2], z.shape[3]
                mask = torch.ones(N, 1, h, w, device=self.device)
                mask[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 0.0
                with self.ema_scope("Plotting Inpaint"):
                    samples, _ = self.sample_log(**sample_args, x0=z[:N], mask=mask)
                log["samples_inpainting"] = self.decode_first_stage(samples.to(self.device))
                log["mask"] = mask
                with self.ema_scope("Plotting Outpaint"):
                    samples, _ = self.sample_log(**sample_args, x0=z[:N], mask=1.0 - mask)
                log["samples_outpainting"] = self.decode_first_stage(samples.to(self.device))

        if plot_progressive_rows:
            with self.ema_scope("Plotting Progressives"):
                _, progressives = self.progressive_denoising(
                    c, shape=(self.channels, self.image_size, self.image_size), batch_size=N
                )
            log["progressive_row"] = self._get_denoise_row_from_list(progressives, desc="Progressive Generation")
        return select_keys(log, return_keys)

    @torch.no_grad()
    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """A ``(B, C, H, W)`` map with C > 3 → RGB in [-1, 1] through a fixed random projection."""
        x = x.float()
        if not hasattr(self, "colorize"):
            self.colorize = torch.randn(3, x.shape[1], 1, 1).to(x)
        return colorize_map(x, self.colorize)
