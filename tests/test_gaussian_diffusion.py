"""ldm.models.diffusion.gaussian_diffusion: the x̂_0 ↔ ε̂ conversions and the prior term in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from ldm.models.diffusion.ddpm import DDPM, LatentDiffusion

ECHO = {"target": "tests.test_ddpm.EchoUNet"}


@pytest.fixture(scope="module", params=["DDPM", "LatentDiffusion"])
def model(request) -> DDPM:
    if request.param == "DDPM":
        return DDPM(unet_config=ECHO, use_ema=False, timesteps=100)
    return LatentDiffusion(
        first_stage_config={"target": "ldm.models.autoencoder.IdentityFirstStage"},
        cond_stage_config="__is_unconditional__",
        unet_config=ECHO,
        use_ema=False,
        timesteps=100,
    )


def test_predict_eps_from_xstart_inverts_predict_start_from_noise(model):
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([1, 50, 99])
    x0 = model.predict_start_from_noise(x_t, t, eps)
    torch.testing.assert_close(model._predict_eps_from_xstart(x_t, t, x0), eps, rtol=1e-4, atol=1e-4)
    # x̂_0 from q_sample's own x_0 and ε: ε comes back
    x_start = torch.randn(3, 2, 4, 4, generator=g)
    x_noisy = model.q_sample(x_start, t, noise=eps)
    torch.testing.assert_close(model._predict_eps_from_xstart(x_noisy, t, x_start), eps, rtol=1e-4, atol=1e-4)


def test_prior_bpd_is_the_kl_of_q_x_T_to_the_standard_normal_in_bits(model):
    """KL(N(√ᾱ_T x, 1 − ᾱ_T) ‖ N(0, 1)) = ½ (ᾱ_T x² − ᾱ_T − log(1 − ᾱ_T)) per dimension, / ln 2, mean per sample."""
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    ab = model.alphas_cumprod[-1].double()
    expected = (0.5 * (ab * x.double() ** 2 - ab - torch.log1p(-ab))).mean(dim=(1, 2, 3)) / math.log(2.0)
    bpd = model._prior_bpd(x)
    assert bpd.shape == (2,)
    torch.testing.assert_close(bpd.double(), expected, rtol=1e-5, atol=1e-9)
