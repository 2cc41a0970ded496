"""DiagonalGaussianDistribution and normal_kl against closed forms and the original's recorded clamp check."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ldm.modules.distributions.distributions import DiagonalGaussianDistribution, DiracDistribution, normal_kl


@pytest.fixture
def params() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 6, 3, 4)  # mean: 3 channels, logvar: 3 channels


def test_moments_are_split_along_channels(params: torch.Tensor) -> None:
    dist = DiagonalGaussianDistribution(params)
    torch.testing.assert_close(dist.mean, params[:, :3])
    torch.testing.assert_close(dist.logvar, params[:, 3:])
    torch.testing.assert_close(dist.std, torch.exp(0.5 * params[:, 3:]))
    torch.testing.assert_close(dist.var, torch.exp(params[:, 3:]))
    assert dist.mode() is dist.mean


def test_kl_against_standard_normal_closed_form() -> None:
    # one element: mean 1, logvar log 4 -> KL(N(1, 4) ‖ N(0, 1)) = ½ (1 + 4 − 1 − log 4)
    params = torch.tensor([1.0, math.log(4.0)]).reshape(1, 2, 1, 1)
    expected = 0.5 * (1.0 + 4.0 - 1.0 - math.log(4.0))
    torch.testing.assert_close(DiagonalGaussianDistribution(params).kl(), torch.tensor([expected]))


def test_kl_and_nll_against_torch_distributions(params: torch.Tensor) -> None:
    dist = DiagonalGaussianDistribution(params)
    mine = torch.distributions.Normal(dist.mean, dist.std)
    standard = torch.distributions.Normal(torch.zeros_like(dist.mean), torch.ones_like(dist.std))
    expected = torch.distributions.kl_divergence(mine, standard).sum(dim=(1, 2, 3))
    torch.testing.assert_close(dist.kl(), expected, rtol=1e-5, atol=1e-5)

    other = DiagonalGaussianDistribution(params.flip(0) * 0.5)
    theirs = torch.distributions.Normal(other.mean, other.std)
    expected = torch.distributions.kl_divergence(mine, theirs).sum(dim=(1, 2, 3))
    torch.testing.assert_close(dist.kl(other), expected, rtol=1e-5, atol=1e-5)
    elementwise = normal_kl(dist.mean, dist.logvar, other.mean, other.logvar)
    torch.testing.assert_close(elementwise.sum(dim=(1, 2, 3)), expected, rtol=1e-5, atol=1e-5)

    x = dist.mean + 0.3
    torch.testing.assert_close(dist.nll(x), -mine.log_prob(x).sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dist.nll(x, dims=[1]), -mine.log_prob(x).sum(dim=1), rtol=1e-5, atol=1e-5)


def test_normal_kl_accepts_scalars() -> None:
    mean = torch.tensor([0.0, 2.0])
    torch.testing.assert_close(normal_kl(mean, 0.0, 0.0, 0.0), 0.5 * mean**2)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        normal_kl(0.0, 0.0, 0.0, 0.0)


def test_sample_is_mean_plus_std_times_cpu_randn(params: torch.Tensor) -> None:
    dist = DiagonalGaussianDistribution(params)
    torch.manual_seed(7)
    sample = dist.sample()
    torch.manual_seed(7)
    torch.testing.assert_close(sample, dist.mean + dist.std * torch.randn(dist.mean.shape))
    generator = torch.Generator().manual_seed(3)
    seeded = dist.sample(generator=generator)
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(seeded, dist.mean + dist.std * noise)


def test_deterministic_collapses_to_the_mean(params: torch.Tensor) -> None:
    dist = DiagonalGaussianDistribution(params, deterministic=True)
    assert torch.equal(dist.std, torch.zeros_like(dist.mean)) and torch.equal(dist.var, dist.std)
    assert torch.equal(dist.sample(), dist.mean)
    assert torch.equal(dist.kl(), torch.zeros(1)) and torch.equal(dist.nll(dist.mean), torch.zeros(1))


def test_logvar_clamp_matches_original(refdata: Path) -> None:
    check = torch.load(refdata / "vectors" / "ldm_tiny.pt", weights_only=True)["autoencoder"]["clamp_check"]
    dist = DiagonalGaussianDistribution(check["parameters"])
    assert dist.logvar.min() >= -30.0 and dist.logvar.max() <= 20.0
    torch.testing.assert_close(dist.logvar, check["logvar"], rtol=1e-6, atol=0)
    torch.testing.assert_close(dist.std, check["std"], rtol=1e-6, atol=0)


def test_dirac_distribution() -> None:
    value = torch.ones(2)
    assert DiracDistribution(value).sample() is value and DiracDistribution(value).mode() is value
