"""The optional training objectives (ldm/models/diffusion/objectives.py) and how DDPM / LatentDiffusion use them:
min-SNR-γ weights, offset noise, input perturbation; all off by default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm.models.diffusion.gaussian_diffusion import GaussianDiffusion
from ldm.models.diffusion.objectives import (
    TrainingObjective,
    min_snr_weight,
    offset_noise,
    perturbed_noise,
    signal_to_noise,
)
from ldm.modules.diffusionmodules.util import make_beta_schedule
from ldm.util import SettingError
from tests.fakes import ScaleUNet, make_ddpm, make_pixel_ldm, unet

T = 20
TINY_UNET = {
    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "params": {"image_size": 8, "in_channels": 3, "out_channels": 3, "model_channels": 32, "attention_resolutions": [],
               "num_res_blocks": 1, "channel_mult": [1, 2], "num_heads": 1},
}


def numpy_snr(betas: np.ndarray, t: int) -> float:
    """ᾱ_t/(1 − ᾱ_t) by an explicit product."""
    alpha_bar = 1.0
    for beta in betas[: t + 1]:
        alpha_bar *= 1.0 - beta
    return alpha_bar / (1.0 - alpha_bar)


# ---- min-SNR weights ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 7, 999])
def test_min_snr_weights_match_the_closed_form(t):
    betas = make_beta_schedule("linear", 1000, linear_start=0.00085, linear_end=0.012)
    diffusion = GaussianDiffusion.from_betas(betas)
    ts = torch.tensor([t])
    snr = signal_to_noise(diffusion.schedule.alphas_cumprod, ts)
    expected_snr = numpy_snr(betas, t)
    assert snr.item() == pytest.approx(expected_snr, rel=1e-4)
    gamma = 5.0
    clipped = min(expected_snr, gamma)
    assert min_snr_weight(snr, gamma, "eps").item() == pytest.approx(clipped / expected_snr, rel=1e-4)
    assert min_snr_weight(snr, gamma, "v").item() == pytest.approx(clipped / (expected_snr + 1), rel=1e-4)
    assert min_snr_weight(snr, gamma, "x0").item() == pytest.approx(clipped, rel=1e-4)


def test_min_snr_weight_at_zero_snr_is_finite():
    snr = torch.tensor([0.0, 1.0, 100.0])
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "eps"), torch.tensor([1.0, 1.0, 0.05]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "v"), torch.tensor([0.0, 0.5, 5.0 / 101.0]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "x0"), torch.tensor([0.0, 1.0, 5.0]))


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_weighted_loss_is_the_hand_weighted_mean(parameterization):
    betas = make_beta_schedule("linear", T)
    diffusion = GaussianDiffusion.from_betas(betas, parameterization=parameterization)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 4, 4, generator=gen), torch.randn(4, 3, 4, 4, generator=gen)
    t = torch.tensor([0, 3, 11, 19])
    model_fn = lambda x_t, steps: 0.3 * x_t  # noqa: E731
    logvar = torch.linspace(-0.5, 0.5, T)
    plain = diffusion.training_losses(model_fn, x0, t, noise, logvar=logvar)
    weighted = diffusion.training_losses(model_fn, x0, t, noise, logvar=logvar, snr_gamma=2.0)

    ab = torch.from_numpy(np.cumprod(1 - betas)).float()[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = {"eps": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[parameterization]
    per_sample = ((0.3 * x_t - target) ** 2).mean(dim=(1, 2, 3))
    snr = (ab / (1 - ab)).flatten()
    weight = {"eps": torch.minimum(snr, torch.tensor(2.0)) / snr,
              "v": torch.minimum(snr, torch.tensor(2.0)) / (snr + 1),
              "x0": torch.minimum(snr, torch.tensor(2.0))}[parameterization]
    torch.testing.assert_close(plain["simple"], per_sample)
    torch.testing.assert_close(weighted["simple"], weight * per_sample)
    torch.testing.assert_close(weighted["snr_weight"], weight)
    torch.testing.assert_close(weighted["simple_unweighted"], per_sample)
    torch.testing.assert_close(weighted["gamma"], weight * per_sample / logvar[t].exp() + logvar[t])
    torch.testing.assert_close(weighted["vlb"], plain["vlb"])  # the VLB term keeps its own weights
    assert "snr_weight" not in plain


# ---- offset noise and input perturbation --------------------------------------------------------------------


def test_offset_noise_has_the_per_channel_mean_variance():
    gen = torch.Generator().manual_seed(1)
    like = torch.zeros(4000, 3, 8, 8)
    noise = offset_noise(like, 0.1, generator=gen)
    channel_means = noise.mean(dim=(2, 3))  # (B, C): the offset m plus the mean of 64 N(0, 1) draws
    assert channel_means.var().item() == pytest.approx(0.1**2 + 1 / 64, rel=0.06)
    # Within a channel the offset is constant: the spread around the channel mean is that of N(0, I).
    assert (noise - channel_means[..., None, None]).var().item() == pytest.approx(63 / 64, rel=0.02)


def test_zero_offset_draws_exactly_randn_like():
    like = torch.zeros(2, 3, 4, 4)
    torch.manual_seed(3)
    expected = torch.randn_like(like)
    torch.manual_seed(3)
    assert torch.equal(offset_noise(like, 0.0), expected)
    torch.manual_seed(3)
    assert torch.equal(TrainingObjective().draw_noise(like, training=True), expected)


def test_perturbed_noise_adds_a_fresh_draw():
    noise = torch.randn(2, 3, 4, 4)
    gen = torch.Generator().manual_seed(5)
    xi = torch.randn(noise.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(perturbed_noise(noise, 0.1, generator=gen), noise + 0.1 * xi)


def test_input_perturbation_noises_x_t_but_keeps_the_target():
    diffusion = GaussianDiffusion.from_betas(make_beta_schedule("linear", T))
    x0, noise, xi = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([4, 15])
    seen = {}

    def model_fn(x_t, steps):
        seen["x_t"] = x_t
        return torch.zeros_like(x_t)

    terms = diffusion.training_losses(model_fn, x0, t, noise, input_noise=noise + 0.1 * xi)
    torch.testing.assert_close(seen["x_t"], diffusion.q_sample(x0, t, noise + 0.1 * xi))
    torch.testing.assert_close(terms["simple"], (noise**2).mean(dim=(1, 2, 3)))  # target ε, not ε + 0.1 ξ


def test_objective_draws_only_while_training():
    objective = TrainingObjective(noise_offset=0.1, input_perturbation=0.1)
    noise = torch.randn(2, 3, 4, 4)
    assert objective.input_noise(noise, training=False) is None
    assert TrainingObjective().input_noise(noise, training=True) is None
    assert not torch.equal(objective.input_noise(noise, training=True), noise)
    torch.manual_seed(0)
    plain = torch.randn_like(noise)
    torch.manual_seed(0)
    assert torch.equal(objective.draw_noise(noise, training=False), plain)


@pytest.mark.parametrize(("key", "value"), [("snr_gamma", 0.0), ("snr_gamma", -1.0), ("noise_offset", -0.1),
                                            ("input_perturbation", -0.5)])
def test_out_of_range_options_name_the_key(key, value):
    with pytest.raises(SettingError, match=f"model.params.{key}"):
        make_ddpm(timesteps=T, image_size=4, **{key: value})


# ---- the models --------------------------------------------------------------------------------------------


def test_defaults_keep_the_original_loss_bit_for_bit():
    model = make_ddpm(timesteps=T, image_size=4, unet_config=unet(ScaleUNet))
    model.train()
    x, t = torch.randn(3, 3, 4, 4), torch.tensor([1, 5, 9])
    torch.manual_seed(7)
    loss, logs = model.p_losses(x, t)
    torch.manual_seed(7)
    noise = torch.randn_like(x)
    expected = model.diffusion.training_losses(model.model, x, t, noise)["simple"].mean()
    assert torch.equal(loss, expected)
    assert set(logs) == {"train/loss_simple", "train/loss_vlb", "train/loss"}


OPTIONS = [
    {"snr_gamma": 5.0},
    {"noise_offset": 0.1},
    {"input_perturbation": 0.1},
    {"zero_terminal_snr": True, "parameterization": "v"},
    {"snr_gamma": 5.0, "noise_offset": 0.05, "input_perturbation": 0.1, "zero_terminal_snr": True,
     "parameterization": "v"},
]


@pytest.mark.parametrize("options", OPTIONS)
def test_ddpm_trains_a_step_with_each_option(options):
    torch.manual_seed(0)
    model = make_ddpm(timesteps=T, image_size=4, unet_config=unet(ScaleUNet), **options)
    model.train()
    x = torch.randn(4, 3, 4, 4)
    t = torch.tensor([0, 5, 12, T - 1])
    loss, logs = model.p_losses(x, t)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(model.model.diffusion_model.scale.grad)
    if "snr_gamma" in options:
        assert 0.0 <= logs["train/snr_weight"].item() <= 1.0 + 1e-6
        assert torch.isfinite(logs["train/loss_simple_unweighted"])


@pytest.mark.parametrize("options", OPTIONS)
def test_latent_diffusion_trains_a_step_with_each_option(options):
    torch.manual_seed(0)
    model = make_pixel_ldm(timesteps=T, image_size=8, channels=3, unet_config=TINY_UNET, learn_logvar=True,
                           **options)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss, logs = model(torch.randn(2, 3, 8, 8), None)
    assert torch.isfinite(loss) and torch.isfinite(logs["train/loss_gamma"])
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert ("train/snr_weight" in logs) == ("snr_gamma" in options)


def test_validation_losses_use_plain_noise_and_keep_the_weights():
    model = make_ddpm(timesteps=T, image_size=4, unet_config=unet(ScaleUNet), snr_gamma=5.0, noise_offset=0.5,
                      input_perturbation=0.5)
    model.eval()
    x, t = torch.randn(3, 3, 4, 4), torch.tensor([1, 5, 9])
    torch.manual_seed(2)
    _, logs = model.p_losses(x, t)
    torch.manual_seed(2)
    expected = model.diffusion.training_losses(model.model, x, t, torch.randn_like(x), snr_gamma=5.0)
    torch.testing.assert_close(logs["val/loss_simple"], expected["simple"].mean())
    torch.testing.assert_close(logs["val/snr_weight"], expected["snr_weight"].mean())


def test_options_reach_latent_diffusion_through_its_kwargs():
    model = make_pixel_ldm(timesteps=T, image_size=4, snr_gamma=3.0, noise_offset=0.1, input_perturbation=0.2)
    assert model.objective == TrainingObjective(3.0, 0.1, 0.2)
