"""SD 2.x finetunes that concatenate an image-like conditioning to the latent: inpainting and depth-to-image.

The UNet sees x̃ = cat([z_t, c_concat], channels) and cross-attends to the text (``conditioning_key: hybrid``):

- ``LatentInpaintDiffusion``: c_concat = [mask resized to the latent grid (nearest), E(masked image)] (1 + 4 ch);
- ``LatentDepth2ImageDiffusion``: c_concat = the depth of the image (a depth model, e.g. MiDaS), resized to the
  latent grid (bicubic) and normalised per sample to [-1, 1] (1 ch).

A finetune starts from a text-to-image checkpoint: ``finetune_keys`` (the first UNet conv) are widened to the new
input channels, the checkpoint filling the first ``keep_finetune_dims`` and zeros the rest. Configs name the classes
``ldm.models.diffusion.ddpm.<Class>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.models.diffusion.concat_logging import DictConditionedLatentDiffusion, LoggedInputs
from ldm.models.diffusion.denoising_diffusion import images_channels_first
from ldm.models.diffusion.diffusion_wrapper import freeze_module
from ldm.models.diffusion.ema_resets import apply_ema_resets
from ldm.models.diffusion.weight_fitting import widen_input_channels
from ldm.util import SettingError, instantiate_from_config

#: The first UNet convolution and its EMA copy: the tensors a finetune with more input channels widens.
FINETUNE_KEYS = ("model.diffusion_model.input_blocks.0.0.weight", "model_ema.diffusion_modelinput_blocks00weight")


def binarize_mask(mask: torch.Tensor) -> torch.Tensor:
    """m ∈ [0, 1] → 1 where m ≥ 0.5 (the region to repaint), else 0; same shape and dtype."""
    return (mask >= 0.5).to(mask.dtype)


def masked_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The image with the region to repaint zeroed: image · [mask < 0.5]. ``image`` ``(B, 3, H, W)`` in [-1, 1],
    ``mask`` ``(B, 1, H, W)``."""
    return image * (mask < 0.5)


def normalize_depth(depth: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """d' = 2 (d − min d) / (max d − min d + eps) − 1 per sample (min/max over C, H, W): min → −1, max → ≈ +1."""
    low = depth.amin(dim=(1, 2, 3), keepdim=True)
    high = depth.amax(dim=(1, 2, 3), keepdim=True)
    return 2.0 * (depth - low) / (high - low + eps) - 1.0


class LatentFinetuneDiffusion(DictConditionedLatentDiffusion):
    """LatentDiffusion with a dict conditioning {``c_concat``: [...], ``c_crossattn``: [...]}; the base of the
    inpainting and depth models (subclasses define :meth:`concat_conditioning`).

    :param concat_keys: the batch keys the concatenated conditioning is made from.
    :param finetune_keys: checkpoint keys widened to the model's input channels when ``ckpt_path`` is loaded
        (None: no widening, the checkpoint must fit; otherwise ``ckpt_path`` is required).
    :param keep_finetune_dims: input channels of those keys taken from the checkpoint (the rest start at 0).
    :param c_concat_log_start, c_concat_log_end: channels of c_concat decoded in ``log_images`` (both None: none).
    """

    def __init__(
        self,
        concat_keys: Sequence[str],
        finetune_keys: Sequence[str] | None = FINETUNE_KEYS,
        keep_finetune_dims: int = 4,
        c_concat_log_start: int | None = None,
        c_concat_log_end: int | None = None,
        *args: Any,
        **kwargs: Any,
    ):
        restart = {key: kwargs.pop(key, None) for key in ("ckpt_path", "ignore_keys")}
        resets = {key: kwargs.pop(key, False) for key in ("reset_ema", "reset_num_ema_updates")}
        if finetune_keys is not None and restart["ckpt_path"] is None:
            raise SettingError(
                f"{type(self).__name__}: finetune_keys are set, so model.params.ckpt_path must name the checkpoint "
                "to finetune from; set finetune_keys: null to build the model without one."
            )
        super().__init__(*args, **kwargs)
        self.finetune_keys = None if finetune_keys is None else tuple(finetune_keys)
        self.concat_keys = tuple(concat_keys)
        self.keep_dims = keep_finetune_dims
        self.c_concat_log_start, self.c_concat_log_end = c_concat_log_start, c_concat_log_end
        if restart["ckpt_path"] is not None:
            self.restarted_from_ckpt = True
            self.init_from_ckpt(restart["ckpt_path"], restart["ignore_keys"] or ())
        apply_ema_resets(self, restart["ckpt_path"], resets["reset_ema"], resets["reset_num_ema_updates"])

    def _fit_checkpoint(self, state_dict: dict[str, torch.Tensor], target: nn.Module) -> None:
        """Widen ``finetune_keys`` to the model's input channels, then the usual fitting."""
        if self.finetune_keys is not None:
            widen_input_channels(state_dict, target.state_dict(), self.finetune_keys, self.keep_dims)
        super()._fit_checkpoint(state_dict, target)

    @torch.no_grad()
    def get_input(
        self,
        batch: Mapping[str, Any],
        k: str,
        cond_key: str | None = None,
        bs: int | None = None,
        return_first_stage_outputs: bool = False,
    ) -> list[Any]:
        """``[z, {"c_concat": [c_cat], "c_crossattn": [c]}]`` (+ ``x, xrec, xc`` with
        ``return_first_stage_outputs``); c_cat ``(B, C_cat, h, w)`` is the subclass's :meth:`concat_conditioning`."""
        if self.cond_stage_trainable:
            raise SettingError(f"{type(self).__name__} needs a frozen conditioner; set cond_stage_trainable: false.")
        parts = super().get_input(
            batch,
            self.first_stage_key,
            return_first_stage_outputs=return_first_stage_outputs,
            force_c_encode=True,
            return_original_cond=True,
            bs=bs,
        )
        cond = self.dict_conditioning(batch, parts[0].shape[-2:], bs, parts[1])
        return [parts[0], cond, *parts[2:]] if return_first_stage_outputs else [parts[0], cond]

    def dict_conditioning(
        self, batch: Mapping[str, Any], latent_size: Sequence[int], bs: int | None, c: Any
    ) -> dict[str, Any]:
        """``{"c_concat": [concat_conditioning(...)], "c_crossattn": [c]}`` for the text features ``c``."""
        return {"c_concat": [self.concat_conditioning(batch, latent_size, bs)], "c_crossattn": [c]}

    def concat_conditioning(
        self, batch: Mapping[str, Any], latent_size: Sequence[int], bs: int | None
    ) -> torch.Tensor:
        """c_concat ``(B, C_cat, h, w)`` of the first ``bs`` samples of ``batch`` on the latent grid ``(h, w)``."""
        raise NotImplementedError(f"{type(self).__name__} must define concat_conditioning(batch, latent_size, bs).")

    def _batch_entry(self, batch: Mapping[str, Any], key: str, bs: int | None) -> torch.Tensor:
        if key not in batch:
            raise KeyError(f"{type(self).__name__}: the batch has no {key!r} (concat_keys); it has {sorted(batch)}.")
        return batch[key][:bs].to(self.device)

    def logged_inputs(self, batch: Mapping[str, Any], N: int) -> LoggedInputs:
        """Latents, conditioning and images of ``N`` samples; extra images: ``c_concat_decoded`` (when a channel
        range is set) and :meth:`_extra_logs`."""
        z, cond, x, xrec, xc = self.get_input(batch, self.first_stage_key, bs=N, return_first_stage_outputs=True)
        extra = {}
        if self.c_concat_log_start is not None or self.c_concat_log_end is not None:
            channels = cond["c_concat"][0][:, self.c_concat_log_start : self.c_concat_log_end]
            extra["c_concat_decoded"] = self.decode_first_stage(channels)
        extra.update(self._extra_logs(batch, N))
        return LoggedInputs(z, cond, x, xrec, xc, extra)

    def _extra_logs(self, batch: Mapping[str, Any], N: int) -> dict[str, torch.Tensor]:
        return {}


class LatentInpaintDiffusion(LatentFinetuneDiffusion):
    """Inpainting: c_concat = [mask on the latent grid ``(B, 1, h, w)``, E(masked image) ``(B, 4, h, w)``].

    Batch entries are channel-last ``(B, H, W, C)``: ``mask`` (1 = repaint) and ``masked_image`` (the image with
    the masked region zeroed, see :func:`masked_image`). Text goes in by cross-attention.
    """

    def __init__(
        self,
        concat_keys: Sequence[str] = ("mask", "masked_image"),
        masked_image_key: str = "masked_image",
        *args: Any,
        **kwargs: Any,
    ):
        if masked_image_key not in concat_keys:
            raise SettingError(f"masked_image_key {masked_image_key!r} must be one of concat_keys {list(concat_keys)}.")
        super().__init__(concat_keys, *args, **kwargs)
        self.masked_image_key = masked_image_key

    def concat_conditioning(
        self, batch: Mapping[str, Any], latent_size: Sequence[int], bs: int | None
    ) -> torch.Tensor:
        """cat over ``concat_keys`` (in order) of E(masked image) ``(B, 4, h, w)`` and the other entries resized
        (nearest) to ``latent_size``: ``(B, Σ channels, h, w)``."""
        pieces = []
        for key in self.concat_keys:
            image = images_channels_first(self._batch_entry(batch, key, bs))
            if key == self.masked_image_key:
                pieces.append(self.get_first_stage_encoding(self.encode_first_stage(image)))
            else:
                pieces.append(F.interpolate(image, size=tuple(latent_size)))
        return torch.cat(pieces, dim=1)

    def _extra_logs(self, batch: Mapping[str, Any], N: int) -> dict[str, torch.Tensor]:
        return {"masked_image": images_channels_first(batch[self.masked_image_key][:N])}


class LatentDepth2ImageDiffusion(LatentFinetuneDiffusion):
    """Depth-to-image: c_concat = the normalised depth ``(B, 1, h, w)`` of ``batch["midas_in"]`` ``(B, 3, H, W)``
    (channel-first, in [-1, 1]), estimated by the frozen ``depth_model`` built from ``depth_stage_config``."""

    def __init__(self, depth_stage_config: Any, concat_keys: Sequence[str] = ("midas_in",), *args: Any, **kwargs: Any):
        if len(concat_keys) != 1:
            raise SettingError(f"LatentDepth2ImageDiffusion takes one concat key (the depth input), got {concat_keys}.")
        super().__init__(concat_keys, *args, **kwargs)
        self.depth_model = freeze_module(
            instantiate_from_config(depth_stage_config, name="model.params.depth_stage_config")
        )
        self.depth_stage_key = self.concat_keys[0]

    @torch.no_grad()
    def depth_conditioning(self, midas_in: torch.Tensor, latent_size: Sequence[int]) -> torch.Tensor:
        """Depth of ``midas_in`` ``(B, 3, H, W)`` resized (bicubic) to ``latent_size`` and normalised per sample by
        :func:`normalize_depth`: ``(B, 1, h, w)``."""
        depth = self.depth_model(midas_in)
        depth = F.interpolate(depth, size=tuple(latent_size), mode="bicubic", align_corners=False)
        return normalize_depth(depth)

    def concat_conditioning(
        self, batch: Mapping[str, Any], latent_size: Sequence[int], bs: int | None
    ) -> torch.Tensor:
        """The :meth:`depth_conditioning` ``(B, 1, h, w)`` of ``batch[depth_stage_key]``."""
        return self.depth_conditioning(self._batch_entry(batch, self.depth_stage_key, bs), latent_size)

    def _extra_logs(self, batch: Mapping[str, Any], N: int) -> dict[str, torch.Tensor]:
        depth = self.depth_model(batch[self.depth_stage_key][:N].to(self.device))
        return {"depth": normalize_depth(depth)}


class LatentUpscaleFinetuneDiffusion(LatentFinetuneDiffusion):
    """Finetune on a low-resolution image: c_concat = ``batch[concat_keys[0]]`` (channel-last ``(B, H, W, C)``),
    optionally space-to-depth reshuffled (``reshuffle_patch_size`` p: ``(C, pH, pW)`` → ``(p²C, H, W)``) and, for
    the ``low_scale_key`` entry, noise-augmented by the frozen ``low_scale_config`` model, whose noise levels then
    condition the UNet as ``c_adm``.
    """

    def __init__(
        self,
        concat_keys: Sequence[str] = ("lr",),
        reshuffle_patch_size: int | None = None,
        low_scale_config: Any = None,
        low_scale_key: str | None = None,
        *args: Any,
        **kwargs: Any,
    ):
        if len(tuple(concat_keys)) != 1:
            raise SettingError(f"LatentUpscaleFinetuneDiffusion takes one concat key, not {list(concat_keys)}.")
        if low_scale_config is not None and low_scale_key is None:
            raise SettingError("low_scale_config needs low_scale_key, the batch key of the image it noises.")
        super().__init__(concat_keys, *args, **kwargs)
        self.reshuffle_patch_size = reshuffle_patch_size
        self.low_scale_model = None
        self.low_scale_key = low_scale_key
        if low_scale_config is not None:
            self.instantiate_low_stage(low_scale_config)

    def instantiate_low_stage(self, config: Any) -> None:
        """Build the low-scale model, frozen (eval mode for good, no gradients)."""
        self.low_scale_model = freeze_module(instantiate_from_config(config, name="model.params.low_scale_config"))

    def dict_conditioning(
        self, batch: Mapping[str, Any], latent_size: Sequence[int], bs: int | None, c: Any
    ) -> dict[str, Any]:
        (key,) = self.concat_keys
        image = images_channels_first(self._batch_entry(batch, key, bs))
        if self.reshuffle_patch_size is not None:
            p = self.reshuffle_patch_size
            image = rearrange(image, "b c (p1 h) (p2 w) -> b (p1 p2 c) h w", p1=p, p2=p)
        if self.low_scale_model is None or key != self.low_scale_key:
            return {"c_concat": [image], "c_crossattn": [c]}
        noised, levels = self.low_scale_model(image)
        return {"c_concat": [noised], "c_crossattn": [c], "c_adm": levels}

    def _extra_logs(self, batch: Mapping[str, Any], N: int) -> dict[str, torch.Tensor]:
        return {"lr": images_channels_first(batch["lr"][:N])}
