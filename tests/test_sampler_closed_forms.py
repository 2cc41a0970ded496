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

import importlib
import math

import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.uni_pc import UniPCSampler
from tests.sampler_fakes import (
    GaussianModel,
    assert_gaussian_statistics,
    ddim_chain_statistics,
    exact_flow_statistics,
    ve_flow_statistics,
    ve_reverse_sde_statistics,
)

QUIET = {"verbose": False, "disable_progress": True}
PARAMETERIZATIONS = ["eps", "x0", "v"]
#: name -> (sampler class, extra sample() arguments)
SAMPLERS = {
    "ddim_eta0": (DDIMSampler, {}),
    "ddim_eta1": (DDIMSampler, {"eta": 1.0}),
    "plms": (PLMSSampler, {}),
    "dpm_solver": (DPMSolverSampler, {"skip_type": "logSNR"}),
    "unipc": (UniPCSampler, {"skip_type": "logSNR"}),
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
    """The DDPM step the sampler starts from: the last DDIM step, or N − 1 for DPM-Solver and UniPC."""
    return 999 if name in ("dpm_solver", "unipc") else int(sampler.ddim_timesteps[-1])


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
#: test_dpm_solver): DDIM's 50 first-order steps 0.025, PLMS 0.005, DPM-Solver++ 20 logSNR steps 0.006; UniPC's
#: class (bh1, order 3) 20 logSNR steps: 0.0001 in std (20 uniform-time steps: 0.027, too coarse at small σ).
GAUSSIAN_STEPS = {
    "ddim_eta0": (50, 0.025), "ddim_eta1": (50, 0.0), "plms": (50, 0.005), "dpm_solver": (20, 0.006),
    "unipc": (20, 0.006),
}  # fmt: skip


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


# ---------------------------------------------------------------------------------------------------------------
# The k-diffusion family and k-style UniPC, through CompVisDenoiser (the core's one conversion point)
# ---------------------------------------------------------------------------------------------------------------
#
# They run in the variance-exploding view z = x_0 + σ ε from z_T = σ_max ξ. For data N(μ, s²) the exact x̂_0 is
# affine in z, so a deterministic sampler is an affine map of ξ and its exact counterpart is the probability-flow
# map (:func:`~tests.sampler_fakes.ve_flow_statistics`) applied to the same ξ: only the discretisation error is
# left. Ancestral and SDE samplers are exact in law only in the limit of the reverse SDE
# (:func:`~tests.sampler_fakes.ve_reverse_sde_statistics`, ≈ N(μ, s²)): 4 standard errors plus an allowance.

K_MODULES = ("ldm.models.diffusion.k_samplers", "ldm.models.diffusion.uni_pc")
#: name -> (function, options, steps on the Karras schedule, allowance). The allowances are ~1.5x the measured
#: deviation of mean/std from the closed form for the eps model (μ = 1, s = 0.5): Euler (first order) 0.017 at 50
#: steps; Heun 0.007, DPM2 0.004, LMS 0.003, DPM++ 2M 0.007, UniPC 0.0035 (order 3: 0.0002) at 20; DPM fast
#: 0.001 at NFE 20; DPM adaptive 0.013 at its default rtol 0.05.
K_DETERMINISTIC = {
    "euler": ("sample_euler", {}, 50, 0.025),
    "heun": ("sample_heun", {}, 20, 0.012),
    "dpm_2": ("sample_dpm_2", {}, 20, 0.008),
    "lms": ("sample_lms", {}, 20, 0.006),
    "dpmpp_2m": ("sample_dpmpp_2m", {}, 20, 0.012),
    "unipc_bh2_order2": ("sample_unipc", {}, 20, 0.006),
    "unipc_bh1_order3": ("sample_unipc", {"order": 3, "variant": "bh1"}, 20, 0.004),
    "dpm_fast": ("sample_dpm_fast", {}, 20, 0.004),
    "dpm_adaptive": ("sample_dpm_adaptive", {}, 0, 0.02),
}
#: Measured deviation in std from the reverse-SDE law (beyond the sampling noise): Euler a 0.014 at 100 steps;
#: DPM2 a 0.007, DPM++ 2S a 0.002, DPM++ SDE 0.001, DPM++ 2M SDE 0.003 (Heun variant likewise), 3M SDE 0.001 at
#: 50. Noise 20 % too strong (s_noise = 1.2, as a wrong σ_up would be) moves the std by ≥ 0.08.
K_STOCHASTIC = {
    "euler_ancestral": ("sample_euler_ancestral", {}, 100, 0.02),
    "dpm_2_ancestral": ("sample_dpm_2_ancestral", {}, 50, 0.012),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", {}, 50, 0.008),
    "dpmpp_sde": ("sample_dpmpp_sde", {}, 50, 0.008),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {}, 50, 0.008),
    "dpmpp_2m_sde_heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}, 50, 0.008),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {}, 50, 0.008),
}
K_ALL = {**K_DETERMINISTIC, **K_STOCHASTIC}


def k_function(name: str):
    """The sampler function of ``K_ALL[name]`` (the test skips while it does not exist)."""
    function = K_ALL[name][0]
    for module in K_MODULES:
        found = getattr(importlib.import_module(module), function, None)
        if found is not None:
            return found
    pytest.skip(f"{function} is not implemented yet")


def run_k(name: str, model: GaussianModel, unit_noise: torch.Tensor, steps: int | None = None, seed: int = 3,
          **options) -> tuple[torch.Tensor, float, float, bool]:  # fmt: skip
    """``(output, σ_max, σ_end, ends_with_denoising)`` of k-sampler ``name`` from z_T = σ_max · ``unit_noise``
    on the Karras schedule (DPM fast/adaptive: their own steps from σ_max down to σ_min, no final denoising)."""
    from ldm.models.diffusion.k_samplers import CompVisDenoiser, schedule_sigmas

    function, fixed, default_steps, _ = K_ALL[name]
    sampler, denoiser = k_function(name), CompVisDenoiser(model)
    sigma_min, sigma_max = float(denoiser.sigma_min), float(denoiser.sigma_max)
    steps = steps or default_steps
    torch.manual_seed(seed)  # the default noise of the stochastic samplers comes from the global generator
    if name in ("dpm_fast", "dpm_adaptive"):
        counts = (steps,) if name == "dpm_fast" else ()
        out = sampler(denoiser, sigma_max * unit_noise, sigma_min, sigma_max, *counts, disable=True, **fixed, **options)
        return out, sigma_max, sigma_min, False
    sigmas = schedule_sigmas("karras", steps, denoiser)
    out = sampler(denoiser, sigmas[0] * unit_noise, sigmas, disable=True, **fixed, **options)
    return out, float(sigmas[0]), float(sigmas[-2]), True


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("name", list(K_ALL))
def test_k_point_mass(name, parameterization):
    """x̂_0 = μ at every σ: a run that ends with a denoising step lands on μ (ancestral and SDE ones too); DPM
    fast/adaptive stop at σ_min on the exact path z = μ + σ ε_T, ε_T = (z_T − μ)/σ_max."""
    model = GaussianModel(mu=0.7, sigma=0.0, parameterization=parameterization)
    unit = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    out, sigma_max, sigma_end, denoised = run_k(name, model, unit, steps=10 if name != "dpm_adaptive" else None)
    expected = torch.full_like(unit, model.mu)
    if not denoised:
        expected = expected + sigma_end * (sigma_max * unit - model.mu) / sigma_max
    # atol: GaussianModel interpolates log ᾱ between integer steps, the denoiser log σ, so at fractional t the
    # model answers for a noise level ~1e-6 (relative) off; LMS's extrapolation carries that to 1.1e-4 at |z| ~ 40.
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-4)


def realised_affine_statistics(unit: torch.Tensor, law_of_unit_normal: tuple[float, float]) -> tuple[float, float]:
    """Mean and std of the affine map a + b ξ whose value for ξ ~ N(0, 1) has ``law_of_unit_normal``, evaluated
    on the realised ``unit`` (so that the test sees the discretisation error, not the sampling noise)."""
    mean, std = law_of_unit_normal
    return mean + std * unit.mean().item(), std * unit.std().item()


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("name", list(K_DETERMINISTIC))
def test_k_deterministic_gaussian_data(name, parameterization):
    model = GaussianModel(mu=1.0, sigma=0.5, parameterization=parameterization)
    unit = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    out, sigma_max, sigma_end, denoised = run_k(name, model, unit)
    law = ve_flow_statistics(model.mu, model.sigma, sigma_max, sigma_end, denoised)
    mean, std = realised_affine_statistics(unit, law)
    allowance = K_DETERMINISTIC[name][3]
    assert abs(out.mean().item() - mean) < allowance, (out.mean().item(), mean)
    assert abs(out.std().item() - std) < allowance, (out.std().item(), std)


@pytest.mark.parametrize("name", list(K_STOCHASTIC))
def test_k_stochastic_gaussian_data(name):
    """The eps model's samples have the reverse SDE's law; x0 and v models give the same samples to float32
    (test_k_parameterizations_give_the_eps_model_samples), so the law holds for them too (and the Brownian-tree
    samplers cost ~1 s per 50-step run of 20 000 scalars)."""
    model = GaussianModel(mu=1.0, sigma=0.5)
    unit = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    out, sigma_max, sigma_end, denoised = run_k(name, model, unit)
    mean, std = ve_reverse_sde_statistics(model.mu, model.sigma, sigma_max, sigma_end, denoised)
    assert_gaussian_statistics(out, mean, std, discretisation=K_STOCHASTIC[name][3])


@pytest.mark.parametrize(
    ("name", "mistake"),
    [("euler", "x0 read as eps"), ("dpmpp_2m", "v read as eps"), ("euler_ancestral", "x0 read as eps"),
     ("euler_ancestral", "noise 20% too strong"), ("dpmpp_2m_sde", "v read as eps"),
     ("dpmpp_2m_sde", "noise 20% too strong")],
)  # fmt: skip
def test_a_wrong_conversion_or_noise_level_fails_the_closed_form(name, mistake):
    """The closed-form checks above can fail: a mislabelled model (the conversion of the wrong output) or
    s_noise = 1.2 (the injected noise of a wrong σ_up) falls outside the same tolerances."""
    stochastic = name in K_STOCHASTIC
    output = {"x0 read as eps": "x0", "v read as eps": "v"}.get(mistake, "eps")
    model = GaussianModel(mu=1.0, sigma=0.5, parameterization=output, declared="eps")
    unit = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    options = {"s_noise": 1.2} if mistake.startswith("noise") else {}
    out, sigma_max, sigma_end, denoised = run_k(name, model, unit, **options)
    if stochastic:
        mean, std = ve_reverse_sde_statistics(model.mu, model.sigma, sigma_max, sigma_end, denoised)
        with pytest.raises(AssertionError):
            assert_gaussian_statistics(out, mean, std, discretisation=K_STOCHASTIC[name][3])
        return
    mean, std = realised_affine_statistics(unit, ve_flow_statistics(1.0, 0.5, sigma_max, sigma_end, denoised))
    allowance = K_DETERMINISTIC[name][3]
    assert abs(out.mean().item() - mean) > allowance or abs(out.std().item() - std) > allowance


@pytest.mark.parametrize("parameterization", ["x0", "v"])
@pytest.mark.parametrize("name", list(K_ALL))
def test_k_parameterizations_give_the_eps_model_samples(name, parameterization):
    """Same predictor, three encodings, same noise: the samples agree with the eps model's up to float32."""
    unit = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    steps = None if name == "dpm_adaptive" else 10
    reference = run_k(name, GaussianModel(mu=0.3, sigma=0.8), unit, steps)[0]
    other = run_k(name, GaussianModel(mu=0.3, sigma=0.8, parameterization=parameterization), unit, steps)[0]
    torch.testing.assert_close(other, reference, rtol=0, atol=2e-4)
