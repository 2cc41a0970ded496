"""Every sampler on data whose exact predictors are known, for eps, x0 and v models alike.

With the optimal predictor of :mod:`tests.sampler_fakes` the three parameterizations describe the same (x̂_0, ε̂),
so each sampler must land on the same closed form whatever the model predicts:

- point mass at μ: ε* is constant along the exact path, so DDIM (η = 0), PLMS and DPM-Solver++ are exact and the
  sample is √ᾱ_0 μ + √(1 − ᾱ_0) ε(x_T), ε(x_T) = (x_T − √ᾱ_start μ)/√(1 − ᾱ_start); x̂_0 = μ at every step;
- Gaussian data N(μ, σ²): the deterministic samplers follow the probability-flow map
  (:func:`~tests.sampler_fakes.exact_flow_statistics`) up to their discretisation error, and DDIM η = 1 is a
  linear-Gaussian chain whose output law is exact (:func:`~tests.sampler_fakes.ddim_chain_statistics`).
"""

from __future__ import annotations

import math

import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.models.diffusion.plms import PLMSSampler
from tests.sampler_fakes import GaussianModel, assert_gaussian_statistics, ddim_chain_statistics, exact_flow_statistics

QUIET = {"verbose": False, "disable_progress": True}
PARAMETERIZATIONS = ["eps", "x0", "v"]
#: name -> (sampler class, extra sample() arguments)
SAMPLERS = {
    "ddim_eta0": (DDIMSampler, {}),
    "ddim_eta1": (DDIMSampler, {"eta": 1.0}),
    "plms": (PLMSSampler, {}),
    "dpm_solver": (DPMSolverSampler, {"skip_type": "logSNR"}),
}
#: 20 000 scalars: SE(mean) = σ/√n ≈ 0.0035 and SE(std) ≈ 0.0025 for σ = 0.5.
SHAPE = (1, 100, 100)


def run(name: str, model: GaussianModel, steps: int, x_T: torch.Tensor, **kwargs):
    """``(sampler, samples, intermediates)`` of sampler ``name`` from ``x_T`` ``(B, ...)``."""
    cls, extra = SAMPLERS[name]
    sampler = cls(model)
    generator = torch.Generator().manual_seed(11)
    samples, inter = sampler.sample(
        steps, x_T.shape[0], tuple(x_T.shape[1:]), x_T=x_T, generator=generator, **extra, **kwargs, **QUIET
    )
    return sampler, samples, inter


def start_index(name: str, sampler) -> int:
    """The DDPM step the sampler starts from: the last DDIM step, or N − 1 for DPM-Solver."""
    return 999 if name == "dpm_solver" else int(sampler.ddim_timesteps[-1])


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_point_mass(name, parameterization):
    model = GaussianModel(mu=0.7, sigma=0.0, parameterization=parameterization)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    sampler, samples, inter = run(name, model, 10, x_T, log_every_t=1)
    torch.testing.assert_close(inter["pred_x0"][-1], torch.full_like(x_T, model.mu), rtol=0, atol=5e-5)
    if name == "ddim_eta1":  # x̂_0 = μ, and the law of the chain
        mean, std = ddim_chain_statistics(model, sampler.ddim_alphas, sampler.ddim_alphas_prev, sampler.ddim_sigmas)
        x_T = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(6))
        assert_gaussian_statistics(run(name, model, 10, x_T)[1], mean, std, discretisation=0.0)
        return
    a_start, a_end = float(model.alphas_cumprod[start_index(name, sampler)]), float(model.alphas_cumprod[0])
    eps = (x_T - math.sqrt(a_start) * model.mu) / math.sqrt(1 - a_start)
    expected = math.sqrt(a_end) * model.mu + math.sqrt(1 - a_end) * eps
    torch.testing.assert_close(samples, expected, rtol=0, atol=5e-5)


#: The discretisation allowance against the exact law, measured for eps models (see test_ddim / test_plms /
#: test_dpm_solver): DDIM's 50 first-order steps 0.025, PLMS 0.005, DPM-Solver++ 20 logSNR steps 0.006.
GAUSSIAN_STEPS = {"ddim_eta0": (50, 0.025), "ddim_eta1": (50, 0.0), "plms": (50, 0.005), "dpm_solver": (20, 0.006)}


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gaussian_data(name, parameterization):
    model = GaussianModel(mu=1.0, sigma=0.5, parameterization=parameterization)
    steps, allowance = GAUSSIAN_STEPS[name]
    x_T = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    sampler, samples, _ = run(name, model, steps, x_T)
    if name == "ddim_eta1":
        mean, std = ddim_chain_statistics(model, sampler.ddim_alphas, sampler.ddim_alphas_prev, sampler.ddim_sigmas)
    else:
        mean, std = exact_flow_statistics(model, start_index(name, sampler))
    assert_gaussian_statistics(samples, mean, std, discretisation=allowance)


@pytest.mark.parametrize("parameterization", ["x0", "v"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_parameterizations_give_the_eps_model_samples(name, parameterization):
    """Same predictor, three encodings: the samples agree with the eps model's up to float32 rounding."""
    x_T = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    reference = run(name, GaussianModel(mu=0.3, sigma=0.8), 10, x_T)[1]
    other = run(name, GaussianModel(mu=0.3, sigma=0.8, parameterization=parameterization), 10, x_T)[1]
    torch.testing.assert_close(other, reference, rtol=0, atol=1e-4)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_img2img_decode_of_a_point_mass_is_exact(parameterization):
    """stochastic_encode(μ, t) = √ᾱ_t μ + √(1 − ᾱ_t) z, whose ε* is z itself; decode keeps it to step 0."""
    model = GaussianModel(mu=-0.4, sigma=0.0, parameterization=parameterization)
    sampler = DDIMSampler(model)
    sampler.make_schedule(50, verbose=False)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    x_t = sampler.stochastic_encode(torch.full_like(noise, model.mu), torch.full((2,), 29), noise=noise)
    decoded = sampler.decode(x_t, None, 30, disable_progress=True)
    a_end = float(model.alphas_cumprod[0])
    torch.testing.assert_close(decoded, math.sqrt(a_end) * model.mu + math.sqrt(1 - a_end) * noise, rtol=0, atol=5e-5)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_guidance_is_linear_in_the_output_of_any_parameterization(parameterization):
    """Guided point masses land on m_u + w (m_c − m_u): the conversion to ε̂ is affine at fixed t."""
    model = GaussianModel(mu=0.0, sigma=0.0, parameterization=parameterization)
    c, uc = torch.full((2, 1, 8), 0.3), torch.zeros(2, 1, 8)
    _, _, inter = run(
        "ddim_eta0", model, 10, torch.randn(2, 1, 4, 4), conditioning=c, unconditional_conditioning=uc,
        unconditional_guidance_scale=2.5,
    )  # fmt: skip
    torch.testing.assert_close(inter["pred_x0"][-1], torch.full((2, 1, 4, 4), 0.75), rtol=0, atol=5e-5)
