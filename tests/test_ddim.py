"""DDIMSampler: Gaussian-data statistics of eps models (other parameterizations and point masses are in
test_sampler_closed_forms), the schedule and noise draws of the reference, guidance schedules, img2img
(stochastic_encode/decode) and the tiny LatentDiffusion reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from tests.sampler_fakes import GaussianModel, assert_gaussian_statistics, ddim_chain_statistics, exact_flow_statistics

QUIET = {"verbose": False, "disable_progress": True}
#: 20 000 scalars: SE(mean) = σ/√n ≈ 0.0035 and SE(std) ≈ σ/√(2n) ≈ 0.0025 for σ = 0.5.
SHAPE = (1, 100, 100)


def gaussian_x_T(seed: int = 0) -> torch.Tensor:
    return torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------
# Correct without reference: Gaussian data
# --------------------------------------------------------------------------------------------------------


def test_eta0_50_steps_maps_noise_to_the_gaussian_data():
    """η = 0 integrates the probability-flow ODE from t = 981 (the last of the 50 steps): the exact flow maps
    N(0, 1) to mean ≈ μ − 0.039 (prior mismatch, √ᾱ_981 μ σ/s_981) and std ≈ σ; DDIM being first order, its
    50-step slope is 4 % (0.021) short of the exact one (measured; it halves as S doubles), so 0.025 is allowed."""
    model = GaussianModel(mu=1.0, sigma=0.5)
    samples, _ = DDIMSampler(model).sample(50, 2, SHAPE, eta=0.0, x_T=gaussian_x_T(), **QUIET)
    mean, std = exact_flow_statistics(model, 981)
    assert_gaussian_statistics(samples, mean, std, discretisation=0.025)
    assert_gaussian_statistics(samples, model.mu, model.sigma, discretisation=0.025 + abs(mean - model.mu))


def test_eta1_50_steps_matches_the_exact_chain_and_the_data():
    """η = 1 is ancestral sampling; with ε* the chain is linear-Gaussian, so its output law is known exactly
    (:func:`ddim_chain_statistics`). 50 such steps under-disperse Gaussian data by ≈ 9 % (std 0.454 for σ = 0.5,
    converging to σ as S grows), which is the allowance against (μ, σ)."""
    model = GaussianModel(mu=1.0, sigma=0.5)
    sampler = DDIMSampler(model)
    generator = torch.Generator().manual_seed(1)
    samples, _ = sampler.sample(50, 2, SHAPE, eta=1.0, x_T=gaussian_x_T(), generator=generator, **QUIET)
    mean, std = ddim_chain_statistics(model, sampler.ddim_alphas, sampler.ddim_alphas_prev, sampler.ddim_sigmas)
    assert_gaussian_statistics(samples, mean, std, discretisation=0.0)
    assert_gaussian_statistics(samples, model.mu, model.sigma, discretisation=0.05)


# --------------------------------------------------------------------------------------------------------
# The original's schedule, noise draws and bookkeeping
# --------------------------------------------------------------------------------------------------------


def test_schedule_arrays_equal_the_reference(refdata):
    ref = torch.load(refdata / "vectors" / "ldm_tiny.pt", weights_only=True)["latent_diffusion"]
    model = GaussianModel()
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev"):
        getattr(model, name).copy_(ref["state_dict"][name])
    sampler = DDIMSampler(model)
    sampler.make_schedule(ref["ddim_eta0"]["S"], ddim_eta=0.0, verbose=False)
    assert isinstance(sampler.ddim_timesteps, np.ndarray) and isinstance(sampler.ddim_alphas_prev, np.ndarray)
    for name, expected in ref["ddim_eta0"]["schedule"].items():
        ours = torch.as_tensor(getattr(sampler, name))
        assert ours.dtype == expected.dtype, name
        assert torch.equal(ours, expected), name


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_global_rng_draws_x_T_first_then_one_normal_per_step(eta):
    """With the global RNG, x_T is the first N(0, I) draw and each step draws one more (even at η = 0)."""
    model = GaussianModel(mu=0.2, sigma=0.8)
    shape = (2, 1, 4, 4)
    torch.manual_seed(7)
    drawn, _ = DDIMSampler(model).sample(5, 2, shape[1:], eta=eta, **QUIET)
    after = torch.rand(1)
    torch.manual_seed(7)
    given, _ = DDIMSampler(model).sample(5, 2, shape[1:], eta=eta, x_T=torch.randn(shape), **QUIET)
    assert torch.equal(drawn, given)
    torch.manual_seed(7)
    for _ in range(1 + 5):
        torch.randn(shape)
    assert torch.equal(after, torch.rand(1))


def test_eta0_is_deterministic_and_generator_is_bit_reproducible():
    model = GaussianModel()
    sampler = DDIMSampler(model)
    x_T = gaussian_x_T()[:, :, :8, :8]
    first, _ = sampler.sample(10, 2, (1, 8, 8), x_T=x_T, **QUIET)
    torch.manual_seed(123)
    second, _ = sampler.sample(10, 2, (1, 8, 8), x_T=x_T, **QUIET)
    assert torch.equal(first, second)

    def stochastic(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return sampler.sample(10, 2, (1, 8, 8), eta=1.0, generator=generator, **QUIET)[0]

    assert torch.equal(stochastic(3), stochastic(3))
    assert not torch.equal(stochastic(3), stochastic(4))


def test_intermediates_and_callbacks():
    model = GaussianModel()
    x_T = torch.randn(2, 1, 4, 4)
    steps, images = [], []
    samples, inter = DDIMSampler(model).sample(
        10, 2, (1, 4, 4), x_T=x_T, callback=steps.append, img_callback=lambda x0, i: images.append(i), **QUIET
    )
    assert steps == images == list(range(10))
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 3
    assert inter["x_inter"][0] is x_T and inter["pred_x0"][0] is x_T and inter["x_inter"][-1] is samples
    _, every = DDIMSampler(model).sample(10, 2, (1, 4, 4), x_T=x_T, log_every_t=1, **QUIET)
    assert len(every["x_inter"]) == len(every["pred_x0"]) == 11


# --------------------------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------------------------


def test_ucg_schedule_sets_the_guidance_scale_of_each_step():
    """A constant schedule is the plain scale; a schedule that is 1 at the last step leaves that step unguided
    (one plain model call), so the last x̂_0 of point masses is m_c."""
    model = GaussianModel(mu=0.0, sigma=0.0)
    c, uc = torch.full((2, 1, 8), 0.3), torch.zeros(2, 1, 8)
    x_T = torch.randn(2, 1, 4, 4)
    guided = lambda **kw: DDIMSampler(model).sample(
        4, 2, (1, 4, 4), conditioning=c, unconditional_conditioning=uc, x_T=x_T, **kw, **QUIET
    )
    assert torch.equal(guided(unconditional_guidance_scale=2.5)[0], guided(ucg_schedule=[2.5] * 4)[0])
    model.calls.clear()
    _, inter = guided(unconditional_guidance_scale=7.0, ucg_schedule=[2.5, 2.5, 2.5, 1.0])
    assert model.calls == [4, 4, 4, 2]
    torch.testing.assert_close(inter["pred_x0"][-1], torch.full((2, 1, 4, 4), 0.3), rtol=0, atol=2e-5)


# --------------------------------------------------------------------------------------------------------
# img2img: stochastic_encode + decode
# --------------------------------------------------------------------------------------------------------


def test_stochastic_encode_is_the_forward_marginal_at_the_ddim_step():
    sampler = DDIMSampler(GaussianModel())
    sampler.make_schedule(50, verbose=False)
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 20, 49])
    encoded = sampler.stochastic_encode(x0, t, noise=noise)
    a = sampler.alphas_cumprod[torch.as_tensor(sampler.ddim_timesteps)[t]].view(3, 1, 1, 1)
    torch.testing.assert_close(encoded, a.sqrt() * x0 + (1 - a).sqrt() * noise, rtol=1e-6, atol=1e-6)
    original = sampler.stochastic_encode(x0, torch.tensor([5, 500, 999]), use_original_steps=True, noise=noise)
    a = sampler.alphas_cumprod[torch.tensor([5, 500, 999])].view(3, 1, 1, 1)
    torch.testing.assert_close(original, a.sqrt() * x0 + (1 - a).sqrt() * noise, rtol=1e-6, atol=1e-6)


def test_img2img_round_trip_recovers_the_gaussian_data():
    """img2img as scripts/img2img.py runs it (strength 0.6 of 50 steps): x_t = stochastic_encode(x0, t_enc − 1)
    is an exact sample of q(x_t), so decode(x_t, t_start=t_enc) only adds DDIM's discretisation error (no prior
    mismatch). Measured for this 30-step decode from t = 581: the std is 0.0226 short (first order: 0.0118 with
    twice the steps, 0.0049 with five times), so N(μ, σ²) comes back within 4 SE + 0.03."""
    model = GaussianModel(mu=1.0, sigma=0.5)
    sampler = DDIMSampler(model)
    sampler.make_schedule(50, verbose=False)
    generator = torch.Generator().manual_seed(2)
    x0 = model.mu + model.sigma * torch.randn((2, *SHAPE), generator=generator)
    t_enc = 30
    x_t = sampler.stochastic_encode(x0, torch.full((2,), t_enc - 1), generator=generator)
    decoded = sampler.decode(x_t, None, t_enc, disable_progress=True)
    mean, std = model.marginal(0)
    assert_gaussian_statistics(decoded, mean, std, discretisation=0.03)
    assert_gaussian_statistics(decoded, model.mu, model.sigma, discretisation=0.03)


def test_decode_matches_sampling_from_the_same_step():
    """decode(x, t_start) runs the same DDIM steps as the sampler's loop over the first t_start timesteps."""
    model = GaussianModel()
    sampler = DDIMSampler(model)
    sampler.make_schedule(20, verbose=False)
    x = torch.randn(2, 1, 4, 4)
    decoded = sampler.decode(x, torch.ones(2, 1, 8), 8, disable_progress=True)
    looped, _ = sampler.ddim_sampling(torch.ones(2, 1, 8), (2, 1, 4, 4), x_T=x, timesteps=9, disable_progress=True)
    assert torch.equal(decoded, looped)


# --------------------------------------------------------------------------------------------------------
# The tiny LatentDiffusion of the original code
# --------------------------------------------------------------------------------------------------------


def test_ldm_tiny_ddim_eta0_matches_reference(refdata):
    ddpm = pytest.importorskip("ldm.models.diffusion.ddpm", reason="LatentDiffusion not available yet")
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    ref = torch.load(refdata / "vectors" / "ldm_tiny.pt", weights_only=True)["latent_diffusion"]
    model = instantiate_from_config(OmegaConf.load(refdata / "configs" / "ldm_tiny.yaml").model)
    assert isinstance(model, ddpm.LatentDiffusion)
    model.load_state_dict(ref["state_dict"], strict=True)
    model.eval()
    inputs, expected = ref["inputs"], ref["ddim_eta0"]
    with torch.no_grad():
        c = model.get_learned_conditioning({"class_label": inputs["class_label"]})
        uc = model.get_learned_conditioning({"class_label": inputs["uc_class_label"]})
    sampler = DDIMSampler(model)
    samples, inter = sampler.sample(
        S=expected["S"], batch_size=2, shape=(4, 16, 16), conditioning=c, eta=expected["eta"], x_T=inputs["x_T"],
        log_every_t=expected["log_every_t"], unconditional_guidance_scale=expected["unconditional_guidance_scale"],
        unconditional_conditioning=uc, **QUIET,
    )  # fmt: skip
    tol = 1e-3 * expected["samples"].abs().max().item()
    torch.testing.assert_close(samples, expected["samples"], rtol=0, atol=tol)
    for key in ("x_inter", "pred_x0"):
        assert len(inter[key]) == len(expected[key]) == 11
        for ours, theirs in zip(inter[key], expected[key]):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3 * theirs.abs().max().item())
    for name, array in expected["schedule"].items():
        ours = torch.as_tensor(getattr(sampler, name)).cpu()
        assert ours.dtype == array.dtype and torch.equal(ours, array), name
