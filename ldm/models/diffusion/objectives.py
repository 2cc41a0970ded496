"""Optional training objectives of a diffusion model: loss weights and the noise the forward process draws.

All are off by default (the original objective); each is a ``DDPM`` / ``LatentDiffusion`` constructor parameter
(``model.params.<name>`` in a config):

- ``snr_gamma`` γ: min-SNR-γ loss weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
  Weighting Strategy"). With SNR_t = ᾱ_t / (1 − ᾱ_t), the per-sample distance L of the network's output is
  weighted by w_t = min(SNR_t, γ) / SNR_t for ε-prediction, min(SNR_t, γ) / (SNR_t + 1) for v-prediction and
  min(SNR_t, γ) for x0-prediction: each is min(SNR_t, γ) · ‖x̂_0 − x_0‖² written in the network's own units.
- ``noise_offset`` o: offset noise, ε = n + o · m with n ~ N(0, I) ``(B, C, H, W)`` and m ~ N(0, 1) ``(B, C, 1, 1)``
  (one draw per sample and channel, broadcast over H, W); ε both makes x_t and is the ε in the target, so the
  network learns to change the mean of each channel (very dark or bright images).
- ``input_perturbation`` p: input perturbation (Ning et al. 2023, "Input Perturbation Reduces Exposure Bias in
  Diffusion Models"): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) (ε + p ξ), ξ ~ N(0, I) fresh, while the target stays that of ε.

Zero terminal SNR (``zero_terminal_snr``) changes the schedule, not the loss:
:func:`~ldm.models.diffusion.schedule.rescale_zero_terminal_snr`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ldm.models.diffusion.prediction import Parameterization, parse_parameterization
from ldm.util import SettingError


def signal_to_noise(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SNR_t = ᾱ_t / (1 − ᾱ_t) at timesteps ``t`` ``(B,)`` of the ``(T,)`` table ``alphas_cumprod``; ``(B,)``."""
    alpha_bar = alphas_cumprod.to(t.device)[t]
    return alpha_bar / (1.0 - alpha_bar)


def min_snr_weight(snr: torch.Tensor, gamma: float, parameterization: str | Parameterization) -> torch.Tensor:
    """The min-SNR-γ weight ``(B,)`` of per-sample losses at signal-to-noise ratios ``snr`` ``(B,)``.

    ε: min(SNR, γ)/SNR, computed as min(1, γ/SNR) (so SNR = 0 gives the limit 1, not 0/0);
    v: min(SNR, γ)/(SNR + 1); x0: min(SNR, γ).
    """
    kind = parse_parameterization(parameterization)
    clipped = torch.clamp(snr, max=gamma)
    if kind is Parameterization.EPS:
        return torch.clamp(gamma / snr, max=1.0)
    if kind is Parameterization.V:
        return clipped / (snr + 1.0)
    return clipped


def offset_noise(like: torch.Tensor, offset: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """ε = n + ``offset`` · m shaped like ``like`` ``(B, C, ...)``: n ~ N(0, I), m ~ N(0, 1) ``(B, C, 1, ...)``.

    With ``offset`` 0 this is exactly ``torch.randn_like(like)`` (the same draw from the same generator state).
    """
    noise = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    if offset == 0.0:
        return noise
    per_channel = like.shape[:2] + (1,) * (like.ndim - 2)
    return noise + offset * torch.randn(per_channel, generator=generator, device=like.device, dtype=like.dtype)


def perturbed_noise(
    noise: torch.Tensor, strength: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """ε + ``strength`` · ξ, ξ ~ N(0, I) a fresh draw shaped like ``noise`` (input perturbation's x_t noise)."""
    xi = torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
    return noise + strength * xi


@dataclass(frozen=True)
class TrainingObjective:
    """The objective options of one model (their ``model.params`` names); all off by default.

    Raises :class:`~ldm.util.SettingError` naming the key for an out-of-range value.
    """

    snr_gamma: float | None = None
    noise_offset: float = 0.0
    input_perturbation: float = 0.0

    def __post_init__(self) -> None:
        if self.snr_gamma is not None and not float(self.snr_gamma) > 0.0:
            raise SettingError(f"model.params.snr_gamma must be a positive number (5 in the paper) or null (off), "
                               f"got {self.snr_gamma}.")
        for key in ("noise_offset", "input_perturbation"):
            value = getattr(self, key)
            if not float(value) >= 0.0:
                raise SettingError(f"model.params.{key} must be >= 0 (0 = off), got {value}.")

    def draw_noise(self, x0: torch.Tensor, training: bool) -> torch.Tensor:
        """The ε of a loss at ``x0`` ``(B, C, ...)``: offset noise while ``training``, N(0, I) otherwise."""
        return offset_noise(x0, self.noise_offset if training else 0.0)

    def input_noise(self, noise: torch.Tensor, training: bool) -> torch.Tensor | None:
        """The noise x_t is made with when it differs from the target's ``noise`` (input perturbation while
        ``training``), else None."""
        if not training or self.input_perturbation == 0.0:
            return None
        return perturbed_noise(noise, self.input_perturbation)
