"""Distributions over latents: the diagonal Gaussian posterior of the KL autoencoder, and ``normal_kl``.

The autoencoder's encoder predicts ``moments = [mean, logvar]`` stacked along the channel axis; the
posterior is ``q(z | x) = N(mean, diag(exp(logvar)))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class AbstractDistribution:
    """Interface: something that can be sampled and has a mode."""

    def sample(self) -> torch.Tensor:
        raise NotImplementedError

    def mode(self) -> torch.Tensor:
        raise NotImplementedError


class DiracDistribution(AbstractDistribution):
    """A point mass at ``value``: sampling and the mode both return it."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def sample(self) -> torch.Tensor:
        return self.value

    def mode(self) -> torch.Tensor:
        return self.value


class DiagonalGaussianDistribution:
    """``N(mean, diag(var))`` from ``parameters = cat([mean, logvar], dim=1)`` of shape ``(B, 2C, H, W)``.

    ``logvar`` is clamped to ``[-30, 20]``. With ``deterministic=True`` the distribution collapses to its
    mean: ``std = var = 0`` and ``kl``/``nll`` are 0.
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False) -> None:
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``z = mean + std · ε``, ``ε ~ N(0, I)``.

        ε is drawn in float32 on the generator's device (the CPU by default, as the original does), so a
        seed gives the same latent on every device; it is then moved to the mean's device and dtype.
        """
        device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=torch.float32)
        return self.mean + self.std * noise.to(device=self.mean.device, dtype=self.mean.dtype)

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL(self ‖ other) summed over ``(C, H, W)``, shape ``(B,)``; ``other=None`` means ``N(0, I)``.

        KL = ½ Σ [ (μ₁ − μ₂)²/σ₂² + σ₁²/σ₂² − 1 − log σ₁² + log σ₂² ].
        """
        if self.deterministic:
            return torch.zeros(1, device=self.mean.device, dtype=self.mean.dtype)
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=[1, 2, 3],
        )

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood ``½ Σ_dims [log 2π + log σ² + (x − μ)²/σ²]``."""
        if self.deterministic:
            return torch.zeros(1, device=self.mean.device, dtype=self.mean.dtype)
        return 0.5 * torch.sum(
            math.log(2.0 * math.pi) + self.logvar + (sample - self.mean).pow(2) / self.var, dim=list(dims)
        )

    def mode(self) -> torch.Tensor:
        return self.mean


def normal_kl(
    mean1: torch.Tensor | float,
    logvar1: torch.Tensor | float,
    mean2: torch.Tensor | float,
    logvar2: torch.Tensor | float,
) -> torch.Tensor:
    """Element-wise KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), broadcasting; at least one arg is a tensor.

    KL = ½ [ −1 + logvar2 − logvar1 + e^(logvar1 − logvar2) + (mean1 − mean2)² e^(−logvar2) ].
    """
    reference = next((x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, torch.Tensor)), None)
    if reference is None:
        raise TypeError("normal_kl: at least one of mean1, logvar1, mean2, logvar2 must be a torch.Tensor.")
    logvar1, logvar2 = (
        x if isinstance(x, torch.Tensor) else torch.tensor(x).to(reference) for x in (logvar1, logvar2)
    )
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )
