"""Zero terminal SNR (Lin et al. 2024): the rescaled betas, finite buffers, the "trailing" sub-schedule, and
sampling a zero-SNR v-model with every sampler family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.named_samplers import NamedSampler
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.schedule import (
    TERMINAL_ALPHA_BAR,
    DiscreteSchedule,
    nonzero_alphas_cumprod,
    rescale_zero_terminal_snr,
    sampler_timesteps,
    schedule_buffers,
    trailing_timesteps,
)
from ldm.modules.diffusionmodules.util import make_beta_schedule, make_ddim_timesteps
from ldm.util import SettingError
from tests.fakes import ScaleUNet, make_ddpm, unet

SD_BETAS = make_beta_schedule("linear", 1000, linear_start=0.00085, linear_end=0.012)


def reference_rescale(betas: np.ndarray) -> list[float]:
    """Algorithm 1 in plain Python floats: shift √ᾱ so the last is 0, scale so the first is unchanged, back to β."""
    roots, product = [], 1.0
    for beta in betas:
        product *= 1.0 - float(beta)
        roots.append(math.sqrt(product))
    first, last = roots[0], roots[-1]
    alpha_bars = [((r - last) * first / (first - last)) ** 2 for r in roots]
    out, previous = [], 1.0
    for alpha_bar in alpha_bars:
        out.append(1.0 - alpha_bar / previous)
        previous = alpha_bar
    return out


@pytest.mark.parametrize("betas", [SD_BETAS, make_beta_schedule("linear", 1000), make_beta_schedule("cosine", 50)],
                         ids=["sd", "ldm", "cosine50"])
def test_rescaled_betas_reach_zero_snr_and_keep_the_first_step(betas):
    rescaled = rescale_zero_terminal_snr(betas)
    alphas_cumprod = np.cumprod(1.0 - rescaled)
    assert alphas_cumprod[-1] == 0.0
    assert math.sqrt(alphas_cumprod[0]) == pytest.approx(math.sqrt(1.0 - betas[0]), rel=1e-12)
    assert rescaled[0] == pytest.approx(betas[0], rel=1e-9)
    assert np.all(rescaled > 0.0) and np.all(rescaled <= 1.0) and rescaled[-1] == 1.0
    np.testing.assert_allclose(rescaled[:-1], reference_rescale(betas)[:-1], rtol=1e-9, atol=1e-12)
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    assert np.all(np.diff(snr) < 0)


def test_rescale_rejects_a_flat_schedule():
    with pytest.raises(SettingError, match="zero_terminal_snr"):
        rescale_zero_terminal_snr(np.zeros(10))


@pytest.mark.parametrize("parameterization", ["v", "x0"])
def test_zero_snr_buffers_are_finite(parameterization):
    model = make_ddpm(timesteps=1000, image_size=4, linear_start=0.00085, linear_end=0.012, zero_terminal_snr=True,
                      parameterization=parameterization)
    buffers = dict(model.named_buffers())
    for name, buffer in buffers.items():
        assert torch.isfinite(buffer).all(), name
    assert model.alphas_cumprod[-1].item() == 0.0
    assert model.sqrt_alphas_cumprod[-1].item() == 0.0
    assert model.sqrt_one_minus_alphas_cumprod[-1].item() == 1.0
    assert model.betas[-1].item() == 1.0
    assert model.sqrt_recip_alphas_cumprod[-1].item() == pytest.approx(TERMINAL_ALPHA_BAR**-0.5)
    np.testing.assert_allclose(model.betas.numpy(), rescale_zero_terminal_snr(SD_BETAS), rtol=1e-6)
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.full((2,), 999)
    assert torch.equal(model.q_sample(x0, t, noise), noise)  # x_T is pure noise


def test_off_by_default_and_unchanged():
    plain = make_ddpm(timesteps=1000, image_size=4)
    explicit = make_ddpm(timesteps=1000, image_size=4, zero_terminal_snr=False)
    for (name, a), (_, b) in zip(plain.named_buffers(), explicit.named_buffers()):
        assert torch.equal(a, b), name


def test_eps_prediction_is_refused_with_the_fix():
    with pytest.raises(SettingError, match="parameterization: v"):
        make_ddpm(timesteps=100, image_size=4, zero_terminal_snr=True)
    with pytest.raises(SettingError, match="parameterization: v"):
        schedule_buffers(rescale_zero_terminal_snr(SD_BETAS), 0.0, "eps")


def test_discrete_schedule_reads_the_last_step_as_tiny():
    alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - rescale_zero_terminal_snr(SD_BETAS))).float()
    schedule = DiscreteSchedule(alphas_cumprod)
    for name, table in schedule.sampler_tables().items():
        assert torch.isfinite(table).all(), name
    grid = schedule.noise_level_grid
    assert torch.isfinite(grid).all() and torch.all(grid[1:] > grid[:-1])
    assert grid[-1].item() == pytest.approx(math.sqrt((1 - TERMINAL_ALPHA_BAR) / TERMINAL_ALPHA_BAR), rel=1e-5)
    assert torch.isfinite(schedule.lambda_(torch.tensor([0.0, 998.5, 999.0]))).all()
    plain = torch.from_numpy(np.cumprod(1.0 - SD_BETAS)).float()
    assert nonzero_alphas_cumprod(plain) is plain  # schedules without a zero are not touched


def test_stand_in_stays_below_the_previous_step():
    alphas_cumprod = np.array([0.9, 1e-9, 0.0])
    safe = nonzero_alphas_cumprod(alphas_cumprod)
    assert safe[-1] == pytest.approx(5e-10) and safe[1] == 1e-9


# ---- trailing spacing -----------------------------------------------------------------------------------------


def test_trailing_timesteps_values():
    np.testing.assert_array_equal(trailing_timesteps(10, 1000), np.arange(99, 1000, 100))
    np.testing.assert_array_equal(trailing_timesteps(25, 1000), np.arange(39, 1000, 40))
    np.testing.assert_array_equal(trailing_timesteps(1, 1000), [999])
    np.testing.assert_array_equal(trailing_timesteps(3, 1000), [332, 666, 999])  # round(1000 − k·333.3) − 1
    assert trailing_timesteps(7, 1000).dtype == np.int64


@pytest.mark.parametrize("spacing", ["uniform", "quad"])
def test_original_spacings_are_unchanged(spacing):
    np.testing.assert_array_equal(sampler_timesteps(spacing, 10, 1000), make_ddim_timesteps(spacing, 10, 1000))


def test_unknown_spacing_names_the_choices():
    with pytest.raises(ValueError, match="trailing"):
        sampler_timesteps("leading", 10, 1000)


# ---- sampling a zero-SNR v-model --------------------------------------------------------------------------------


class GaussianVModel(torch.nn.Module):
    """The exact v-prediction of data N(μ + mean(cond), s² I) over a (zero-SNR) DDPM's buffers."""

    def __init__(self, ddpm, mu: float = 0.5, s: float = 0.5):
        super().__init__()
        self.ddpm, self.mu, self.s = ddpm, mu, s
        self.parameterization = "v"
        self.schedule = DiscreteSchedule.from_model(ddpm)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.ddpm, name)

    def apply_model(self, x, t, cond=None):
        view = (x.shape[0],) + (1,) * (x.ndim - 1)
        ab = (self.schedule.alpha(t.double().cpu()) ** 2).view(view)
        mean = self.mu + (0.0 if cond is None else cond.double().flatten(1).mean(1).view(view))
        a, sigma = ab.sqrt(), (1 - ab).sqrt()
        residual = (x.double() - a * mean) / (ab * self.s**2 + 1 - ab)
        eps, x0 = sigma * residual, mean + a * self.s**2 * residual
        return (a * eps - sigma * x0).float()


@pytest.fixture(scope="module")
def zero_snr_model():
    ddpm = make_ddpm(timesteps=1000, image_size=4, linear_start=0.00085, linear_end=0.012, zero_terminal_snr=True,
                     parameterization="v", unet_config=unet(ScaleUNet))
    return GaussianVModel(ddpm)


@pytest.mark.parametrize("sampler_class", [DDIMSampler, PLMSSampler])
def test_ddim_family_samples_a_zero_snr_model_with_trailing_steps(zero_snr_model, sampler_class):
    sampler = sampler_class(zero_snr_model)
    cond, uncond = torch.zeros(64, 1, 4, 4), torch.full((64, 1, 4, 4), -0.5)
    samples, _ = sampler.sample(S=10, batch_size=64, shape=(1, 4, 4), conditioning=cond, verbose=False,
                                unconditional_guidance_scale=3.0, unconditional_conditioning=uncond,
                                guidance_rescale=0.7, timestep_spacing="trailing", disable_progress=True,
                                generator=torch.Generator().manual_seed(0))
    assert sampler.ddim_timesteps[-1] == 999
    assert torch.isfinite(samples).all()
    unguided, _ = sampler.sample(S=50, batch_size=256, shape=(1, 4, 4), conditioning=None, verbose=False,
                                 timestep_spacing="trailing", disable_progress=True,
                                 generator=torch.Generator().manual_seed(0))
    # From t = T − 1, where ᾱ = 0, the flow maps N(0, I) onto the data N(0.5, 0.25), up to the discretisation
    # error of 50 steps (std 0.47; 0.49 at 200 steps).
    assert unguided.mean().item() == pytest.approx(0.5, abs=0.02)
    assert unguided.std().item() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("name", ["dpm_solver", "Euler", "DPM++ 2M Karras"])
def test_other_samplers_stay_finite_on_a_zero_snr_model(zero_snr_model, name):
    samples, _ = NamedSampler(zero_snr_model, name).sample(
        S=8, batch_size=4, shape=(1, 4, 4), conditioning=None, verbose=False, disable_progress=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(samples).all()


def test_ancestral_sampling_of_a_zero_snr_ddpm_is_finite():
    torch.manual_seed(0)
    model = make_ddpm(timesteps=20, image_size=4, zero_terminal_snr=True, parameterization="v",
                      unet_config=unet(ScaleUNet))
    assert torch.isfinite(model.sample(batch_size=2)).all()
