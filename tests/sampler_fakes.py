"""A fake diffusion model for the sampler tests: the exact predictor of Gaussian data, in any parameterization.

For data x_0 ~ N(μ, σ² I), with a = √ᾱ_t and s = √(1 − ᾱ_t), the marginal is x_t ~ N(a μ, s_t² I) with
s_t² = a² σ² + s², and the optimal predictors (posterior means) are

    x̂_0*(x_t) = E[x_0 | x_t] = μ + a σ² (x_t − a μ) / s_t²,
    ε*(x_t)   = E[ε | x_t]   = s (x_t − a μ) / s_t²,
    v*(x_t)   = a ε* − s x̂_0*,

so that x_t = a x̂_0* + s ε* holds exactly: a sampler must give the same result for the three parameterizations.
σ = 0 is a point mass at μ (x̂_0* = μ).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from ldm.modules.diffusionmodules.util import make_beta_schedule

SD_LINEAR = {"linear_start": 0.00085, "linear_end": 0.012}


def flatten_tensors(cond) -> list[torch.Tensor]:
    """Every tensor of a tensor / list / dict conditioning, in key order."""
    if cond is None:
        return []
    if isinstance(cond, dict):
        return [t for key in sorted(cond) for t in flatten_tensors(cond[key])]
    if isinstance(cond, (list, tuple)):
        return [t for item in cond for t in flatten_tensors(item)]
    return [cond]


class GaussianModel(nn.Module):
    """``apply_model(x, t, cond)`` = the optimal ``parameterization`` output (ε*, x̂_0* or v*) for data
    N(μ + m(cond), σ² I), m(cond) = Σ per-sample means of the conditioning tensors (so the conditioning matters
    for guidance). Fractional ``t`` interpolates log ᾱ linearly in t. Records the batch size of every call."""

    def __init__(
        self,
        mu: float = 0.5,
        sigma: float = 0.5,
        timesteps: int = 1000,
        parameterization: str = "eps",
        declared: str | None = None,
        **schedule,
    ) -> None:
        super().__init__()
        #: what ``apply_model`` returns, and what the model says it returns (``declared`` differs: a mislabelled
        #: model, for checks that a wrong conversion would be caught).
        self.output_kind = parameterization
        self.parameterization = declared or parameterization
        betas = make_beta_schedule("linear", timesteps, **(schedule or SD_LINEAR))
        alphas_cumprod = np.cumprod(1.0 - betas)
        self.num_timesteps = timesteps
        self.mu, self.sigma = mu, sigma
        self.register_buffer("betas", torch.tensor(betas, dtype=torch.float32))
        self.register_buffer("alphas_cumprod", torch.tensor(alphas_cumprod, dtype=torch.float32))
        self.register_buffer(
            "alphas_cumprod_prev", torch.tensor(np.append(1.0, alphas_cumprod[:-1]), dtype=torch.float32)
        )
        self.calls: list[int] = []

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ at (possibly fractional) timesteps ``t`` ``(B,)``, float64."""
        log_ab = self.alphas_cumprod.double().log()
        t = t.double().clamp(0, self.num_timesteps - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=self.num_timesteps - 1)
        w = t - lo
        return torch.exp(log_ab[lo] * (1 - w) + log_ab[hi] * w)

    def data_mean(self, cond, batch: int) -> torch.Tensor:
        """μ + m(cond) per sample, ``(B,)`` float64."""
        mean = torch.full((batch,), self.mu, dtype=torch.float64, device=self.device)
        for tensor in flatten_tensors(cond):
            mean = mean + tensor.double().reshape(batch, -1).mean(1)
        return mean

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        self.calls.append(x.shape[0])
        view = (x.shape[0],) + (1,) * (x.ndim - 1)
        ab = self.alpha_bar(t).view(view)
        mu = self.data_mean(cond, x.shape[0]).view(view)
        a, s = torch.sqrt(ab), torch.sqrt(1 - ab)
        residual = (x.double() - a * mu) / (ab * self.sigma**2 + 1 - ab)
        eps, x0 = s * residual, mu + a * self.sigma**2 * residual
        outputs = {"eps": eps, "x0": x0, "v": a * eps - s * x0}
        return outputs[self.output_kind].to(x.dtype)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        noise = torch.randn_like(x_start) if noise is None else noise
        ab = self.alphas_cumprod[t].view((x_start.shape[0],) + (1,) * (x_start.ndim - 1))
        return ab.sqrt() * x_start + (1 - ab).sqrt() * noise

    def marginal(self, index: int) -> tuple[float, float]:
        """(√ᾱ_n μ, s_n): mean and std of the exact marginal at DDPM step ``index``."""
        ab = float(self.alphas_cumprod[index].double())
        return math.sqrt(ab) * self.mu, math.sqrt(ab * self.sigma**2 + 1 - ab)


def exact_flow_statistics(model: GaussianModel, start_index: int) -> tuple[float, float]:
    """Mean and std of the exact probability-flow ODE map of x ~ N(0, I), placed at DDPM step ``start_index``,
    down to step 0: x_0 = m_0 + (s_0 / s_start)(x − m_start) with (m_n, s_n) = :meth:`GaussianModel.marginal`.

    This differs from (μ, σ) by the prior mismatch (s_0/s_start) √ᾱ_start μ (≈ 0.035 μ for the SD schedule) and
    by the end point ᾱ_0 < 1 (≈ 1e-3 relative); a sampler adds only its discretisation error to it.
    """
    m0, s0 = model.marginal(0)
    m_start, s_start = model.marginal(start_index)
    return m0 - s0 / s_start * m_start, s0 / s_start


def assert_gaussian_statistics(x: torch.Tensor, mean: float, std: float, discretisation: float) -> None:
    """Sample mean/std of ``x`` within 4 standard errors (SE(mean) = std/√n, SE(std) ≈ std/√(2n)) plus an
    allowance for the sampler's discretisation error."""
    n = x.numel()
    tol_mean = 4 * std / math.sqrt(n) + discretisation
    tol_std = 4 * std / math.sqrt(2 * n) + discretisation
    assert abs(x.mean().item() - mean) < tol_mean, (x.mean().item(), mean, tol_mean)
    assert abs(x.std().item() - std) < tol_std, (x.std().item(), std, tol_std)


def ddim_chain_statistics(model: GaussianModel, alphas, alphas_prev, sigmas) -> tuple[float, float]:
    """Exact mean and std after the DDIM chain (any η) started from N(0, 1) with the exact ε* of Gaussian data.

    With ε* and x̂_0 both affine in x_t, each step x_prev = c x_t + d + σ_t z is affine too, so
    mean ← c·mean + d and var ← c²·var + σ_t², applied from the last schedule entry down to the first.
    """
    mean, var = 0.0, 1.0
    for index in reversed(range(len(alphas))):
        a, a_prev, sigma = float(alphas[index]), float(alphas_prev[index]), float(sigmas[index])
        s2 = a * model.sigma**2 + 1 - a
        eps_slope = math.sqrt(1 - a) / s2
        eps_offset = -eps_slope * math.sqrt(a) * model.mu
        x0_slope = (1 - math.sqrt(1 - a) * eps_slope) / math.sqrt(a)
        x0_offset = -math.sqrt(1 - a) * eps_offset / math.sqrt(a)
        direction = math.sqrt(1 - a_prev - sigma**2)
        slope = math.sqrt(a_prev) * x0_slope + direction * eps_slope
        offset = math.sqrt(a_prev) * x0_offset + direction * eps_offset
        mean, var = slope * mean + offset, slope**2 * var + sigma**2
    return mean, math.sqrt(var)


# ---------------------------------------------------------------------------------------------------------------
# The variance-exploding view of the k-samplers: z = x_0 + σ ε, data N(μ, s²), z_T = σ_max · N(0, 1)
# ---------------------------------------------------------------------------------------------------------------


def _denoised(mu: float, s: float, sigma: float, mean: float, var: float) -> tuple[float, float]:
    """Mean and std of D(z, σ) = μ + s²/(s² + σ²)(z − μ), the exact denoiser, for z of the given mean and var."""
    gain = s**2 / (s**2 + sigma**2)
    return mu + gain * (mean - mu), gain * math.sqrt(var)


def ve_flow_statistics(mu: float, s: float, sigma_max: float, sigma_end: float, denoise: bool) -> tuple[float, float]:
    """Mean and std of the exact probability-flow map of z_T ~ N(0, σ_max²) down to ``sigma_end`` > 0 for data
    N(μ, s²), then (``denoise``) of D at ``sigma_end``, the last step of a k-sampler that ends at σ = 0.

    The flow keeps (z − μ)/√(s² + σ²) constant: z(σ) − μ = r (z_T − μ), r = √(s² + σ²)/√(s² + σ_max²).
    """
    r = math.sqrt(s**2 + sigma_end**2) / math.sqrt(s**2 + sigma_max**2)
    mean, var = mu - r * mu, (r * sigma_max) ** 2
    return _denoised(mu, s, sigma_end, mean, var) if denoise else (mean, math.sqrt(var))


def ve_reverse_sde_statistics(
    mu: float, s: float, sigma_max: float, sigma_end: float, denoise: bool
) -> tuple[float, float]:
    """As :func:`ve_flow_statistics` for the reverse-time SDE dz = −2σ ∇log p_σ(z) dσ + √(2σ) dW̄ (Karras et al.
    2022, eq. 6 with β = 1: the limit of the ancestral and SDE samplers at η = 1).

    With u = s² + σ² the moments solve d(mean − μ)/du = (mean − μ)/u and dvar/du = 2 var/u − 1, so
    mean − μ = −μ u/u_T and var = u − s² u²/u_T² (from var = σ_max² at u_T = s² + σ_max²): the prior mismatch
    decays as s²/u_T, where the flow keeps it as √(u/u_T).
    """
    u, u_max = s**2 + sigma_end**2, s**2 + sigma_max**2
    mean, var = mu - mu * u / u_max, u - s**2 * u**2 / u_max**2
    return _denoised(mu, s, sigma_end, mean, var) if denoise else (mean, math.sqrt(var))
