"""The fixed-variance Gaussian diffusion as methods over the schedule buffers (mixed into ``DDPM``).

- forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), so x_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε;
- posterior q(x_{t−1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, β̃_t I);
- the network predicts ε (``parameterization="eps"``) or x_0 (``"x0"``); the loss is L1 or L2 to that target.

The host class sets ``v_posterior``, ``parameterization`` and ``loss_type`` before ``register_schedule``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ldm.models.diffusion.schedule import NON_PERSISTENT_BUFFERS, PERSISTENT_BUFFERS, make_betas, schedule_buffers
from ldm.modules.diffusionmodules.util import extract_into_tensor
from ldm.modules.distributions.distributions import normal_kl
from ldm.util import UnsupportedSettingError, default, mean_flat


class GaussianDiffusionMixin:
    """``register_schedule``, ``q_*``, ``predict_*`` / ``_predict_*``, the prior's bits per dim and the simple loss."""

    def register_schedule(
        self,
        given_betas: Sequence[float] | None = None,
        beta_schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
    ) -> None:
        """Register the 12 persistent schedule buffers and the non-persistent ``lvlb_weights`` (float32, (T,))."""
        betas = make_betas(given_betas, beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        self.num_timesteps = int(betas.shape[0])
        self.linear_start = linear_start
        self.linear_end = linear_end
        buffers = schedule_buffers(betas, self.v_posterior, self.parameterization)
        for name in PERSISTENT_BUFFERS:
            self.register_buffer(name, buffers[name])
        for name in NON_PERSISTENT_BUFFERS:
            self.register_buffer(name, buffers[name], persistent=False)

    def q_mean_variance(
        self, x_start: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean √ᾱ_t x_0, variance 1 − ᾱ_t and log-variance of q(x_t | x_0), each broadcastable to x_start."""
        mean = extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x̂_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε."""
        return (
            extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise
        )

    def _predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        """ε̂ = (√(1/ᾱ_t) x_t − x̂_0) / √(1/ᾱ_t − 1), the inverse of :meth:`predict_start_from_noise`."""
        return (
            extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart
        ) / extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def _prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) ‖ N(0, I)) per sample ``(B,)``, averaged over dimensions, in bits (the VLB's prior term)."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        qt_mean, _, qt_log_variance = self.q_mean_variance(x_start, t)
        kl_prior = normal_kl(mean1=qt_mean, logvar1=qt_log_variance, mean2=0.0, logvar2=0.0)
        return mean_flat(kl_prior) / math.log(2.0)

    def q_posterior(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean c1_t x_0 + c2_t x_t, variance β̃_t and clipped log β̃_t of q(x_{t−1} | x_t, x_0)."""
        posterior_mean = (
            extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        posterior_variance = extract_into_tensor(self.posterior_variance, t, x_t.shape)
        posterior_log_variance_clipped = extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return posterior_mean, posterior_variance, posterior_log_variance_clipped

    def _predict_x0(self, x: torch.Tensor, t: torch.Tensor, model_out: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "eps":
            return self.predict_start_from_noise(x, t=t, noise=model_out)
        return model_out

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a draw from q(x_t | x_0)."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        return (
            extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def get_loss(self, pred: torch.Tensor, target: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """|target − pred| (``l1``) or (target − pred)² (``l2``), averaged when ``mean``."""
        if self.loss_type == "l1":
            loss = (target - pred).abs()
            return loss.mean() if mean else loss
        if self.loss_type != "l2":
            raise UnsupportedSettingError(f"unknown loss type {self.loss_type!r}; use 'l1' or 'l2'.")
        reduction = "mean" if mean else "none"
        return torch.nn.functional.mse_loss(target, pred, reduction=reduction)

    def _target(self, x_start: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise if self.parameterization == "eps" else x_start
