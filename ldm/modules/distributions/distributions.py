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


# Range the log-variance is clamped to: e^-30 and e^20 bound the variance away from 0 and overflow.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
_LOG_TWO_PI = math.log(2.0 * math.pi)
_PER_SAMPLE = (1, 2, 3)


class DiagonalGaussianDistribution:
    """``N(mean, diag(var))`` from ``parameters = cat([mean, logvar], dim=1)`` of shape ``(B, 2C, H, W)``.

    ``logvar`` is clamped to ``[-30, 20]``. With ``deterministic=True`` the distribution collapses to its
    mean: ``std = var = 0`` and ``kl``/``nll`` are 0.
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False) -> None:
        self.parameters = parameters
        self.deterministic = deterministic
        mean, raw_logvar = parameters.chunk(2, dim=1)  # (B, C, H, W) each
        self.mean = mean
        self.logvar = raw_logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        if deterministic:
            self.std = self.var = torch.zeros_like(mean)
        else:
            self.var = self.logvar.exp()
            self.std = (0.5 * self.logvar).exp()

    def _zero(self) -> torch.Tensor:
        return self.mean.new_zeros(1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``z = mean + std · ε``, ``ε ~ N(0, I)``.

        ε is drawn in float32 on the generator's device (the CPU without a generator), so a seed gives the
        same latent on every device; it is then moved to the mean's device and dtype.
        """
        source = torch.device("cpu") if generator is None else generator.device
        eps = torch.randn(self.mean.shape, generator=generator, device=source, dtype=torch.float32)
        return self.mean + self.std * eps.to(self.mean)

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL(self ‖ other) summed over ``(C, H, W)``, shape ``(B,)``; ``other=None`` means ``N(0, I)``.

        KL = ½ Σ [ (μ₁ − μ₂)²/σ₂² + σ₁²/σ₂² − 1 − log σ₁² + log σ₂² ]  (with μ₂ = 0, σ₂ = 1 for ``N(0, I)``,
        which the same expression evaluates exactly).
        """
        if self.deterministic:
            return self._zero()
        mu2, var2, logvar2 = (0.0, 1.0, 0.0) if other is None else (other.mean, other.var, other.logvar)
        per_element = (self.mean - mu2).pow(2) / var2 + self.var / var2 - 1.0 - self.logvar + logvar2
        return 0.5 * per_element.sum(dim=_PER_SAMPLE)

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = _PER_SAMPLE) -> torch.Tensor:
        """Negative log-likelihood ``½ Σ_dims [log 2π + log σ² + (x − μ)²/σ²]``."""
        if self.deterministic:
            return self._zero()
        scaled_sq = (sample - self.mean).pow(2) / self.var
        return 0.5 * (_LOG_TWO_PI + self.logvar + scaled_sq).sum(dim=list(dims))

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
    tensors = [arg for arg in (mean1, logvar1, mean2, logvar2) if isinstance(arg, torch.Tensor)]
    if not tensors:
        raise TypeError("normal_kl: at least one of mean1, logvar1, mean2, logvar2 must be a torch.Tensor.")
    lv1, lv2 = (arg if isinstance(arg, torch.Tensor) else torch.tensor(arg).to(tensors[0])
                for arg in (logvar1, logvar2))
    variance_ratio = torch.exp(lv1 - lv2)
    mean_term = (mean1 - mean2) ** 2 * torch.exp(-lv2)
    return 0.5 * (-1.0 + lv2 - lv1 + variance_ratio + mean_term)
