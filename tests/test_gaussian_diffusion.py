"""ldm.models.diffusion.gaussian_diffusion and prediction: the equations for ε, x0 and v models.

Evidence: the SD 2.x original's v-model numbers (tests/refdata/sd2/vectors/v.pt), closed forms (the prior term,
a point mass, Gaussian data with its exact optimal predictors), and inverse pairs (target ∘ split = identity).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from ldm.models.diffusion.ddpm import DDPM, LatentDiffusion
from ldm.models.diffusion.gaussian_diffusion import GaussianDiffusion
from ldm.models.diffusion.prediction import Parameterization, parse_parameterization, split_prediction
from ldm.models.diffusion.schedule import PERSISTENT_BUFFERS
from ldm.modules.diffusionmodules.util import make_beta_schedule
from ldm.util import SettingError
from tests.fakes import GaussianOptimum
from tests.helpers import REFDATA

ECHO = {"target": "tests.fakes.EchoUNet"}
PARAMETERIZATIONS = [p.value for p in Parameterization]
V_CASE = torch.load(REFDATA / "sd2" / "vectors" / "v.pt", weights_only=True)


def sd_betas(timesteps: int = 1000) -> np.ndarray:
    return make_beta_schedule("linear", timesteps, linear_start=0.00085, linear_end=0.012)


# --------------------------------------------------------------------------------------------------------
# The one conversion point
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_the_target_of_a_noised_sample_splits_back_into_x0_and_the_noise(parameterization):
    diffusion = GaussianDiffusion.from_betas(sd_betas(), parameterization=parameterization)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    prediction = diffusion.split(x_t, t, diffusion.target(x0, noise, t))
    torch.testing.assert_close(prediction.x0, x0, rtol=0, atol=5e-4)
    torch.testing.assert_close(prediction.eps, noise, rtol=0, atol=5e-4)


def test_unknown_parameterizations_name_the_choices():
    with pytest.raises(SettingError, match=r"'eps', 'x0', 'v'"):
        parse_parameterization("epsilon")
    with pytest.raises(SettingError, match="parameterization 'score'"):
        split_prediction("score", torch.zeros(1), torch.zeros(1), torch.ones(1), torch.zeros(1))
    with pytest.raises(SettingError, match="parameterization 'velocity'"):
        DDPM(unet_config=ECHO, use_ema=False, timesteps=10, parameterization="velocity")


def test_v_conversions_and_loss_equal_the_sd2_original():
    """A v-model DDPM with the SD 2.x schedule reproduces the original's buffers, q_sample, get_v,
    predict_start_from_z_and_v, predict_eps_from_z_and_v, the all-ones VLB weights and p_losses."""
    inputs, outputs = V_CASE["inputs"], V_CASE["outputs"]
    model = DDPM(unet_config=ECHO, use_ema=False, parameterization="v", linear_start=0.00085, linear_end=0.012)
    for name in PERSISTENT_BUFFERS:
        torch.testing.assert_close(getattr(model, name), V_CASE["schedule"][name], rtol=1e-6, atol=0)
    torch.testing.assert_close(model.lvlb_weights, V_CASE["lvlb_weights"], rtol=0, atol=0)
    x_start, noise, t, v = inputs["x_start"], inputs["noise"], inputs["t"], inputs["v"]
    tol = {"rtol": 1e-5, "atol": 1e-6}
    x_t = model.q_sample(x_start, t, noise)
    torch.testing.assert_close(x_t, outputs["q_sample"], **tol)
    torch.testing.assert_close(model.get_v(x_start, noise, t), outputs["get_v"], **tol)
    for name in ("predict_start_from_z_and_v", "predict_eps_from_z_and_v"):
        torch.testing.assert_close(getattr(model, name)(x_t, t, v), outputs[name], **tol)

    class Replay(nn.Module):  # the original UNet's output at (q_sample, t, c)
        def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
            return outputs["apply_model"]

    model.model.diffusion_model = Replay()
    loss, logs = model.p_losses(x_start, t, noise=noise)
    torch.testing.assert_close(loss, outputs["p_losses_train_loss"], rtol=1e-5, atol=0)
    assert set(logs) == set(outputs["p_losses_train_loss_dict"])


# --------------------------------------------------------------------------------------------------------
# The forward process and the prior
# --------------------------------------------------------------------------------------------------------


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


def test_a_stand_alone_process_has_the_modules_buffers(model):
    alone = GaussianDiffusion.from_betas(model.betas.double().numpy())
    for name in PERSISTENT_BUFFERS:
        torch.testing.assert_close(getattr(alone.schedule, name), getattr(model, name), rtol=1e-6, atol=1e-7)
    assert alone.num_timesteps == model.num_timesteps == 100


def test_predict_eps_from_xstart_inverts_predict_start_from_noise(model):
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([1, 50, 99])
    x0 = model.predict_start_from_noise(x_t, t, eps)
    torch.testing.assert_close(model._predict_eps_from_xstart(x_t, t, x0), eps, rtol=1e-4, atol=1e-4)


def test_prior_bpd_is_the_kl_of_q_x_T_to_the_standard_normal_in_bits(model):
    """KL(N(√ᾱ_T x, 1 − ᾱ_T) ‖ N(0, 1)) = ½ (ᾱ_T x² − ᾱ_T − log(1 − ᾱ_T)) per dimension, / ln 2, mean per sample."""
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    ab = model.alphas_cumprod[-1].double()
    expected = (0.5 * (ab * x.double() ** 2 - ab - torch.log1p(-ab))).mean(dim=(1, 2, 3)) / math.log(2.0)
    bpd = model._prior_bpd(x)
    assert bpd.shape == (2,)
    torch.testing.assert_close(bpd.double(), expected, rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------------------------------------
# Training losses
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_the_exact_target_has_zero_loss_and_an_offset_has_its_square(parameterization):
    diffusion = GaussianDiffusion.from_betas(sd_betas(), parameterization=parameterization)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([5, 300, 900])
    exact = lambda x_t, steps: diffusion.target(x0, noise, steps)
    terms = diffusion.training_losses(exact, x0, t, noise)
    assert terms["simple"].abs().max() < 1e-10 and "gamma" not in terms
    logvar = torch.linspace(-1.0, 1.0, 1000)
    off = lambda x_t, steps: diffusion.target(x0, noise, steps) + 0.5
    terms = diffusion.training_losses(off, x0, t, noise, logvar=logvar)
    torch.testing.assert_close(terms["simple"], torch.full((3,), 0.25), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["gamma"], 0.25 / logvar[t].exp() + logvar[t])
    torch.testing.assert_close(terms["vlb"], diffusion.schedule.lvlb_weights[t] * 0.25)


# --------------------------------------------------------------------------------------------------------
# Ancestral sampling for every parameterization
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_a_point_mass_lands_exactly_on_its_value(parameterization):
    """Data = 0.7 everywhere: the optimal predictor gives x̂_0 = 0.7 at every step and the last step (t = 0,
    posterior mean = x̂_0, no noise) returns it. Before the one conversion point an x0-model under the
    ε-only samplers turned this into mean −7.1, std 11.5."""
    model = DDPM(unet_config=ECHO, use_ema=False, timesteps=200, parameterization=parameterization,
                 clip_denoised=False, log_every_t=1000, image_size=8, channels=2)
    model.model.diffusion_model = GaussianOptimum(0.7, 0.0, model.alphas_cumprod, parameterization)
    samples = model.sample(batch_size=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples, torch.full_like(samples, 0.7), rtol=0, atol=1e-4)


@pytest.mark.parametrize("parameterization", ["x0", "v"])
def test_ancestral_sampling_turns_noise_into_gaussian_data(parameterization):
    """1000 steps with the optimal x0 or v predictor for x_0 ~ N(0.5, 0.5²) (ε: tests/test_ddpm.py, against the
    chain's exact law). The fixed-variance chain's law is within 0.5 % of the data's; n = 16 384 scalars give
    standard errors 0.5/√n ≈ 0.004 (mean) and 0.5/√(2n) ≈ 0.0028 (std): we allow 5 of them plus 1 % of σ."""
    mu, s = 0.5, 0.5
    model = LatentDiffusion(
        first_stage_config={"target": "ldm.models.autoencoder.IdentityFirstStage"},
        cond_stage_config="__is_unconditional__",
        unet_config=ECHO,
        use_ema=False,
        parameterization=parameterization,
        log_every_t=1000,
    )
    model.model.diffusion_model = GaussianOptimum(mu, s, model.alphas_cumprod, parameterization)
    samples = model.p_sample_loop(None, (64, 1, 16, 16), verbose=False, generator=torch.Generator().manual_seed(0))
    n = samples.numel()
    assert abs(samples.mean().item() - mu) < 5 * s / math.sqrt(n) + 1e-3
    assert abs(samples.std().item() - s) < 5 * s / math.sqrt(2 * n) + 0.01 * s
