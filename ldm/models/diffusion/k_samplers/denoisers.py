"""A discrete-time ldm model seen as a k-diffusion denoiser D(z, σ) ≈ E[x_0 | z], z = x_0 + σ ε.

The model was trained on x_t = a x_0 + s ε with a = √ᾱ_t, s = √(1 − ᾱ_t); dividing by a gives z with
σ = s / a = √((1 − ᾱ_t)/ᾱ_t). So, for a noise level σ,

(1) x_t = z / √(σ² + 1)   (a = 1/√(σ² + 1), s = σ a),
(2) t = the model time of σ, log σ linear in t between the grid points σ_n (fractional unless ``quantize``),
(3) x̂_0 = z − σ ε̂, ε̂ the core's conversion of the (guided) model output at (x_t, t) (for a v-model
    this is x̂_0 = z / (σ² + 1) − σ v̂ / √(σ² + 1)). Written in z, it rounds as k-diffusion does for an ε-model.

Classifier-free guidance runs in the same call (one doubled batch) when ``uncond`` is given: guidance on the raw
output equals guidance on x̂_0 at fixed σ, because (3) is affine in the output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ldm.models.diffusion.k_samplers.common import append_zero
from ldm.models.diffusion.sampler_core import Conditioning, denoise, parameterization_of
from ldm.models.diffusion.schedule import DiscreteSchedule, loglinear_noise_level, loglinear_timestep

__all__ = ["CompVisDenoiser", "CompVisVDenoiser"]


class _ModelCall:
    """The inner model as the core calls it: a fixed parameterization and extra ``apply_model`` keywords."""

    def __init__(self, model: Any, parameterization: str, keywords: dict[str, Any]) -> None:
        self.model = model
        self.parameterization = parameterization
        self.keywords = keywords

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.model.apply_model(x, t, cond, **self.keywords)


class CompVisDenoiser(nn.Module):
    """k-diffusion's ``CompVisDenoiser``: eqs. (1)–(3) over a model with ``alphas_cumprod`` and ``apply_model``.

    The output is read as the model's ``parameterization`` (ε when it has none; x0 and v work too).
    ``device`` is accepted for k-diffusion's signature; the grids live where ``model.alphas_cumprod`` does.
    """

    #: The parameterization the output is read as; None means the model's own.
    output_kind: str | None = None

    def __init__(self, model: Any, quantize: bool = False, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.inner_model = model
        self.quantize = quantize
        self.sigma_data = 1.0
        grid = DiscreteSchedule.from_model(model).noise_level_grid.to(model.alphas_cumprod.device)
        self.register_buffer("sigmas", grid)
        self.register_buffer("log_sigmas", grid.log())

    @property
    def sigma_min(self) -> torch.Tensor:
        """σ_0, the smallest noise level of the grid (0-dim)."""
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        """σ_{N−1}, the largest noise level of the grid (0-dim)."""
        return self.sigmas[-1]

    @property
    def parameterization(self) -> str:
        """What the inner model's output is read as (``eps``, ``x0`` or ``v``)."""
        return self.output_kind or parameterization_of(self.inner_model)

    def get_sigmas(self, n: int | None = None) -> torch.Tensor:
        """The "normal" schedule: σ(t) at n model times evenly spaced from N − 1 down to 0, then 0; ``(n + 1,)``.

        The times are fractional (eq. 2 inverted), unlike DDIM's integer steps. ``n=None``: the whole grid.
        """
        if n is None:
            return append_zero(self.sigmas.flip(0))
        times = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(times))

    def sigma_to_t(self, sigma: torch.Tensor, quantize: bool | None = None) -> torch.Tensor:
        """Eq. (2): model time of ``sigma`` (any shape) in [0, N − 1]; with ``quantize`` the nearest step (int64)."""
        quantize = self.quantize if quantize is None else quantize
        return loglinear_timestep(sigma, self.log_sigmas, quantize)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Eq. (2) inverted: σ at model time ``t`` (any shape, fractional allowed)."""
        return loglinear_noise_level(t, self.log_sigmas)

    def get_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """k-diffusion's preconditioning of an ε-model, (c_out, c_in) = (−σ, 1/√(σ² + 1))."""
        return -sigma, (sigma**2 + self.sigma_data**2).rsqrt()

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning = None,
        uncond: Conditioning = None,
        cond_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """x̂_0 ``(B, ...)`` at z = ``x`` ``(B, ...)`` and noise levels ``sigma`` ``(B,)`` (or one for all).

        ``uncond``/``cond_scale``: classifier-free guidance o_u + s (o_c − o_u) in one doubled batch, with
        ``guidance_rescale`` φ as in :func:`~ldm.models.diffusion.sampler_core.rescale_guidance`; other keyword
        arguments go on to ``apply_model``.
        """
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
        scale_in = (1 / (sigma**2 + 1).sqrt()).reshape((-1,) + (1,) * (x.ndim - 1))  # eq. (1): a
        noise_in = sigma.reshape(scale_in.shape) * scale_in  # s = σ a
        model = _ModelCall(self.inner_model, self.parameterization, kwargs)
        x_t = x * scale_in.to(x.dtype)
        prediction = denoise(
            model, x_t, self.sigma_to_t(sigma), cond, scale_in, noise_in, uncond, cond_scale,
            guidance_rescale=guidance_rescale,
        )  # fmt: skip
        return x - sigma.reshape(scale_in.shape).to(x.dtype) * prediction.eps  # eq. (3): x̂_0 = z − σ ε̂


class CompVisVDenoiser(CompVisDenoiser):
    """k-diffusion's ``CompVisVDenoiser``: :class:`CompVisDenoiser` reading the output as v whatever the model says."""

    output_kind = "v"

    def get_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """k-diffusion's preconditioning of a v-model, (c_skip, c_out, c_in) = (1/(σ²+1), −σ/√(σ²+1), 1/√(σ²+1))."""
        norm = sigma**2 + self.sigma_data**2
        return self.sigma_data**2 / norm, -sigma * self.sigma_data * norm.rsqrt(), norm.rsqrt()
