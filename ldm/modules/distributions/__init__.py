"""Latent distributions (the KL autoencoder's posterior) and the Gaussian KL."""

from ldm.modules.distributions.distributions import (
    AbstractDistribution,
    DiagonalGaussianDistribution,
    DiracDistribution,
    normal_kl,
)

__all__ = ["AbstractDistribution", "DiagonalGaussianDistribution", "DiracDistribution", "normal_kl"]
