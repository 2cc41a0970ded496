"""Low-resolution conditioning of the x4 upscaler: the low-res image, optionally noised, and its noise level.

``ImageConcatWithNoiseAugmentation`` diffuses the low-resolution image with its own forward process
q(x_s | x_0) = N(√ᾱ_s x_0, (1 − ᾱ_s) I) at a noise level s; the upscaler's UNet receives x_s (channel concat) and s
(as the class label ``y``). Configs name these classes ``ldm.modules.diffusionmodules.upscaling.<Class>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ldm.models.diffusion.schedule import PERSISTENT_BUFFERS, make_betas, schedule_buffers
from ldm.modules.diffusionmodules.util import extract_into_tensor

#: The schedule tables a low-scale model keeps (its state-dict keys, e.g. ``low_scale_model.betas``): the forward
#: process q(x_s | x_0) part of DDPM's persistent buffers, without the posterior q(x_{s-1} | x_s, x_0) ones.
LOW_SCALE_BUFFERS = tuple(name for name in PERSISTENT_BUFFERS if not name.startswith("posterior_"))


class AbstractLowScaleModel(nn.Module):
    """A conditioning image passed through unchanged; with ``noise_schedule_config`` it also owns a schedule.

    ``noise_schedule_config`` holds :meth:`register_schedule`'s keywords (``beta_schedule``, ``timesteps``,
    ``linear_start``, ``linear_end``, ``cosine_s``).
    """

    def __init__(self, noise_schedule_config: Mapping[str, Any] | None = None):
        super().__init__()
        if noise_schedule_config is not None:
            self.register_schedule(**dict(noise_schedule_config))

    def register_schedule(
        self,
        beta_schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
    ) -> None:
        """The forward-process tables of β_1..β_T (float32 ``(T,)`` buffers, all persistent)."""
        betas = make_betas(None, beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        tables = schedule_buffers(betas, 0.0, "eps")
        self.num_timesteps = len(betas)
        self.linear_start, self.linear_end = linear_start, linear_end
        for name in LOW_SCALE_BUFFERS:
            self.register_buffer(name, tables[name])

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_s = √ᾱ_s x_0 + √(1 − ᾱ_s) ε for ``x_start`` ``(B, ...)`` and levels ``t`` ``(B,)``; ε ~ N(0, I) if not
        given (drawn with ``randn_like``)."""
        if not hasattr(self, "sqrt_alphas_cumprod"):
            raise RuntimeError(
                f"{type(self).__name__} has no noise schedule; give it a noise_schedule_config to noise its input."
            )
        if noise is None:
            noise = torch.randn_like(x_start)
        signal = extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape)
        spread = extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape)
        return signal * x_start + spread * noise

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, None)``: the image as it is, no noise level."""
        return x, None

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The image space is the conditioning space: identity."""
        return x


class SimpleImageConcat(AbstractLowScaleModel):
    """The low-res image unchanged, always at noise level 0."""

    def __init__(self):
        super().__init__(noise_schedule_config=None)
        self.max_noise_level = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, zeros (B,) int64)``."""
        return x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device)


def as_noise_levels(noise_level: Any, batch_size: int, device: torch.device) -> torch.Tensor:
    """A given noise level as ``(B,)`` int64: a tensor of B levels, or one int (or 0-d tensor) for every sample."""
    if isinstance(noise_level, bool) or not isinstance(noise_level, (int, torch.Tensor)):
        raise TypeError(f"noise_level must be an int or a (B,) tensor of ints, got {type(noise_level).__name__}.")
    levels = torch.as_tensor(noise_level, device=device).long()
    return levels.expand(batch_size) if levels.ndim == 0 else levels


class ImageConcatWithNoiseAugmentation(AbstractLowScaleModel):
    """The low-res image noised to a level s: ``forward(x (B, C, H, W)) -> (x_s, s (B,))``.

    Training draws s ~ U{0, ..., max_noise_level − 1} per sample; sampling passes the level to use (the x4
    upscaler's scripts use 20). ``to_cuda`` is accepted for config compatibility and has no effect.
    """

    def __init__(self, noise_schedule_config: Mapping[str, Any], max_noise_level: int = 1000, to_cuda: bool = False):
        super().__init__(noise_schedule_config=noise_schedule_config)
        self.max_noise_level = max_noise_level

    def forward(self, x: torch.Tensor, noise_level: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x_s = √ᾱ_s x + √(1 − ᾱ_s) ε with s drawn (``torch.randint`` first, then ε by ``randn_like``) or given."""
        if noise_level is None:
            levels = torch.randint(0, self.max_noise_level, (x.shape[0],), device=x.device).long()
        else:
            levels = as_noise_levels(noise_level, x.shape[0], x.device)
        return self.q_sample(x, levels), levels
