"""Stand-in networks and small diffusion models the tests share (configs name them as ``tests.fakes.<Class>``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ldm.models.diffusion.ddpm import DDPM, LatentDiffusion


class EchoUNet(nn.Module):
    """A parameter-free stand-in for the UNet: returns x_t (so ε̂ = x_t)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return x


class RecordingUNet(nn.Module):
    """Returns zeros and remembers what it was called with."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        self.seen = {"x": x, "t": t, **kwargs}
        return torch.zeros_like(x[:, :1])


class ScaleUNet(nn.Module):
    """ε̂ = s · x_t with one learnable scalar s (initially 1)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.scale * x


class GaussianOptimum(nn.Module):
    """The exact posterior-mean predictor of data x_0 ~ N(μ, s² I), in any parameterization.

    With a = √ᾱ_t, σ = √(1 − ᾱ_t) and d = a² s² + σ²: E[x_0 | x_t] = μ + a s² (x_t − a μ) / d,
    E[ε | x_t] = σ (x_t − a μ) / d, E[v | x_t] = a E[ε | x_t] − σ E[x_0 | x_t]. s = 0 is a point mass at μ.
    """

    def __init__(self, mu: float, s: float, alphas_cumprod: torch.Tensor, parameterization: str = "eps"):
        super().__init__()
        self.mu, self.s, self.parameterization = mu, s, parameterization
        self.register_buffer("alphas_cumprod", alphas_cumprod.double().clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        ab = self.alphas_cumprod[t].view(-1, *((1,) * (x.ndim - 1)))
        a, sigma = ab.sqrt(), (1 - ab).sqrt()
        centred = x.double() - a * self.mu
        d = a * a * self.s**2 + sigma * sigma
        x0, eps = self.mu + a * self.s**2 * centred / d, sigma * centred / d
        out = {"eps": eps, "x0": x0, "v": a * eps - sigma * x0}[self.parameterization]
        return out.to(x.dtype)


def unet(cls: type[nn.Module]) -> dict[str, str]:
    """A ``unet_config`` that builds ``cls``."""
    return {"target": f"{cls.__module__}.{cls.__name__}"}


def make_ddpm(**kwargs) -> DDPM:
    """A pixel-space DDPM without EMA, on the echo UNet unless ``unet_config`` says otherwise."""
    kwargs.setdefault("use_ema", False)
    kwargs.setdefault("unet_config", unet(EchoUNet))
    return DDPM(**kwargs)


def make_pixel_ldm(**kwargs) -> LatentDiffusion:
    """An unconditional LatentDiffusion on an identity first stage (z = scale_factor · x)."""
    kwargs.setdefault("use_ema", False)
    kwargs.setdefault("unet_config", unet(EchoUNet))
    return LatentDiffusion(
        first_stage_config={"target": "ldm.models.autoencoder.IdentityFirstStage"},
        cond_stage_config="__is_unconditional__",
        **kwargs,
    )
