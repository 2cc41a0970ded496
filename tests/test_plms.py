"""PLMSSampler: Gaussian-data statistics and convergence of eps models (point masses and x0/v models are in
test_sampler_closed_forms), the multistep coefficients and the warm-up step."""

from __future__ import annotations

import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.plms import PLMSSampler, adams_bashforth_eps
from tests.sampler_fakes import GaussianModel, assert_gaussian_statistics, exact_flow_statistics

QUIET = {"verbose": False, "disable_progress": True}
#: 20 000 scalars: SE(mean) ≈ 0.0035, SE(std) ≈ 0.0025 for σ = 0.5.
SHAPE = (1, 100, 100)


def test_plms_50_steps_maps_noise_to_the_gaussian_data():
    """PLMS integrates the same ODE as DDIM η = 0 from t = 981 but at 4th order: its 50-step slope is within
    0.3 % of the exact flow map (measured 0.5004 vs 0.5017), so 0.005 is allowed on top of 4 SE. Against (μ, σ)
    the exact map's prior mismatch (0.039 in the mean) is added."""
    model = GaussianModel(mu=1.0, sigma=0.5)
    x_T = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    samples, _ = PLMSSampler(model).sample(50, 2, SHAPE, x_T=x_T, **QUIET)
    mean, std = exact_flow_statistics(model, 981)
    assert_gaussian_statistics(samples, mean, std, discretisation=0.005)
    assert_gaussian_statistics(samples, model.mu, model.sigma, discretisation=0.005 + abs(mean - model.mu))


def test_plms_converges_faster_than_ddim():
    """Max error against the exact flow map on a grid of x_T: DDIM is first order, PLMS much better."""
    model = GaussianModel(mu=1.0, sigma=0.5)
    x_T = torch.linspace(-3, 3, 13).view(13, 1)
    mean, std = exact_flow_statistics(model, 981)
    exact = mean + std * x_T
    plms, _ = PLMSSampler(model).sample(50, 13, (1,), x_T=x_T, **QUIET)
    ddim, _ = DDIMSampler(model).sample(50, 13, (1,), x_T=x_T, **QUIET)
    assert (plms - exact).abs().max() < 0.1 * (ddim - exact).abs().max()


@pytest.mark.parametrize("order", [2, 3, 4])
def test_adams_bashforth_integrates_polynomials_exactly(order):
    """The k-step rule on ε_{−j} = p(−j) returns ∫_0^1 p for every polynomial p of degree < k."""
    coefficients = torch.randn(order)
    p = lambda s: sum(float(c) * s**k for k, c in enumerate(coefficients))
    integral = sum(float(c) / (k + 1) for k, c in enumerate(coefficients))
    history = [torch.tensor([p(-j)]) for j in range(order - 1, 0, -1)]
    assert adams_bashforth_eps(torch.tensor([p(0)]), history).item() == pytest.approx(integral, rel=1e-5)


def test_first_step_is_the_pseudo_improved_euler_step():
    """Step 1: ε' = (ε(x_T, t) + ε(x̃, t_next)) / 2 with x̃ the DDIM step; two model calls, then one per step."""
    model = GaussianModel(mu=0.3, sigma=0.6)
    sampler = PLMSSampler(model)
    x_T = torch.randn(2, 1, 4, 4)
    model.calls.clear()
    _, inter = sampler.sample(5, 2, (1, 4, 4), x_T=x_T, log_every_t=1, **QUIET)
    assert len(model.calls) == 6

    ddim = DDIMSampler(model)
    ddim.make_schedule(5, verbose=False)
    t, t_next = (torch.full((2,), int(s)) for s in ddim.ddim_timesteps[[-1, -2]])
    e_t = model.apply_model(x_T, t)
    x_tilde, _ = ddim._ddim_update(x_T, e_t, 4)
    expected, _ = ddim._ddim_update(x_T, (e_t + model.apply_model(x_tilde, t_next)) / 2, 4)
    torch.testing.assert_close(inter["x_inter"][1], expected, rtol=1e-6, atol=1e-6)


def test_guided_plms_uses_one_doubled_batch_per_call():
    model = GaussianModel()
    c = torch.randn(2, 1, 8)
    model.calls.clear()
    PLMSSampler(model).sample(
        5, 2, (1, 4, 4), conditioning={"c_crossattn": [c]}, unconditional_conditioning={"c_crossattn": [c * 0]},
        unconditional_guidance_scale=7.5, **QUIET,
    )  # fmt: skip
    assert model.calls == [4] * 6
