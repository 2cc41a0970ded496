"""``LatentUpscaleDiffusion``: the SD x4 upscaler, a text-conditioned latent model that also sees a noised
low-resolution image.

The low-res image x_lr is diffused by the low-scale model to a level s (``ImageConcatWithNoiseAugmentation``):
c = {``c_concat``: [x_lr,s], ``c_crossattn``: [τ(text)], ``c_adm``: s}; with ``conditioning_key: hybrid-adm`` the
UNet gets cat([z_t, x_lr,s]) and the level s as its class label ``y``. Training draws s; sampling fixes it.
Configs name the class ``ldm.models.diffusion.ddpm.LatentUpscaleDiffusion``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ldm.models.diffusion.concat_logging import DictConditionedLatentDiffusion, LoggedInputs
from ldm.models.diffusion.denoising_diffusion import images_channels_first
from ldm.models.diffusion.diffusion_wrapper import freeze_module
from ldm.util import SettingError, instantiate_from_config


class LatentUpscaleDiffusion(DictConditionedLatentDiffusion):
    """LatentDiffusion conditioned on text and a noise-augmented low-resolution image.

    :param low_scale_config: the low-scale model (frozen), e.g. ``ImageConcatWithNoiseAugmentation``.
    :param low_scale_key: batch key of the low-res image, channel-last ``(B, H, W, C)`` in [-1, 1].
    :param noise_level_key: batch key of per-sample noise levels to use instead of random ones (None: random).
    """

    def __init__(self, *args: Any, low_scale_config: Any, low_scale_key: str = "LR", noise_level_key: str | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.cond_stage_trainable:
            raise SettingError("LatentUpscaleDiffusion needs a frozen conditioner; set cond_stage_trainable: false.")
        self.instantiate_low_stage(low_scale_config)
        self.low_scale_key = low_scale_key
        self.noise_level_key = noise_level_key

    def instantiate_low_stage(self, config: Any) -> None:
        """Build the low-scale model, frozen (eval mode for good, no gradients)."""
        model = instantiate_from_config(config, name="model.params.low_scale_config")
        self.low_scale_model = freeze_module(model)

    @torch.no_grad()
    def low_scale_cond(
        self, x_low: torch.Tensor, c: torch.Tensor, noise_level: torch.Tensor | int | None = None
    ) -> dict[str, Any]:
        """The conditioning dict of a low-res image ``x_low`` ``(B, C, H, W)`` and text features ``c``: the image
        noised by the low-scale model at ``noise_level`` (``(B,)`` or one int; drawn when None)."""
        args = () if noise_level is None else (noise_level,)
        noised, levels = self.low_scale_model(x_low.to(self.device), *args)
        return {"c_concat": [noised], "c_crossattn": [c], "c_adm": levels}

    @torch.no_grad()
    def get_input(
        self,
        batch: Mapping[str, Any],
        k: str,
        cond_key: str | None = None,
        bs: int | None = None,
        log_mode: bool = False,
    ) -> list[Any]:
        """``[z, cond]``; with ``log_mode`` ``[z, cond, x, xrec, xc, x_low, x_low_rec, noise_level]``.

        The latents (and their draw from the posterior) come first, then the noise level s, then the noise of
        the low-res image, so one seed gives the original's numbers.
        """
        if log_mode:
            z, c, x, xrec, xc = super().get_input(
                batch, self.first_stage_key, return_first_stage_outputs=True, force_c_encode=True,
                return_original_cond=True, bs=bs,
            )
        else:
            z, c = super().get_input(batch, k, force_c_encode=True, bs=bs)
        x_low = images_channels_first(batch[self.low_scale_key][:bs]).to(self.device)
        levels = None
        if self.noise_level_key is not None:
            levels = torch.as_tensor(batch[self.noise_level_key][:bs], device=self.device).long()
        cond = self.low_scale_cond(x_low, c, levels)
        if not log_mode:
            return [z, cond]
        x_low_rec = self.low_scale_model.decode(cond["c_concat"][0])
        return [z, cond, x, xrec, xc, x_low, x_low_rec, cond["c_adm"]]

    def logged_inputs(self, batch: Mapping[str, Any], N: int) -> LoggedInputs:
        """Latents, conditioning and images of ``N`` samples; extra images: ``x_lr`` and its noised version at the
        drawn levels, ``x_lr_rec_@noise_levels{s_1-s_2-...}``."""
        z, cond, x, xrec, xc, x_low, x_low_rec, levels = self.get_input(
            batch, self.first_stage_key, bs=N, log_mode=True
        )
        tag = "-".join(str(int(s)) for s in levels.tolist())
        return LoggedInputs(z, cond, x, xrec, xc, {"x_lr": x_low, f"x_lr_rec_@noise_levels{tag}": x_low_rec})
