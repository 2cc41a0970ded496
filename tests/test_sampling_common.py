"""The DDIM schedule shared by DDIM and PLMS: timesteps, eq. 16 σ's and the buffers a sampler keeps."""

from __future__ import annotations

import numpy as np
import torch

from ldm.models.diffusion.sampling_common import DDIMScheduleSampler
from ldm.modules.diffusionmodules.util import make_ddim_sampling_parameters, make_ddim_timesteps
from tests.sampler_fakes import GaussianModel


def test_make_ddim_timesteps_matches_the_original_rule():
    steps = make_ddim_timesteps("uniform", 10, 1000, verbose=False)
    assert steps.dtype == np.int64 and steps.tolist() == list(range(1, 1000, 100))
    assert make_ddim_timesteps("uniform", 30, 1000, verbose=False).tolist() == [1 + 33 * k for k in range(31)]
    quad = make_ddim_timesteps("quad", 5, 1000, verbose=False)
    assert quad.tolist() == (np.floor(np.linspace(0, np.sqrt(800), 5) ** 2) + 1).astype(int).tolist()


def test_make_ddim_sampling_parameters_types_and_eq16():
    """σ = η √((1 − ᾱ_prev)/(1 − ᾱ) · (1 − ᾱ/ᾱ_prev)), bit-identical to the original's mixed numpy/torch
    expression (which takes 1/(1 − ᾱ) in float32)."""
    alphacums = GaussianModel().alphas_cumprod
    steps = make_ddim_timesteps("uniform", 50, 1000, verbose=False)
    sigmas, alphas, alphas_prev = make_ddim_sampling_parameters(alphacums, steps, eta=0.7, verbose=False)
    assert alphas.dtype == torch.float32 and torch.equal(alphas, alphacums[steps])
    assert isinstance(alphas_prev, np.ndarray) and alphas_prev.dtype == np.float64
    assert alphas_prev[0] == float(alphacums[0])
    assert np.array_equal(alphas_prev[1:], alphacums[steps[:-1]].double().numpy())
    a = alphas.double().numpy()
    inv_one_minus_a = (1 / (1 - alphas)).double().numpy()
    expected = 0.7 * np.sqrt((1 - alphas_prev) * inv_one_minus_a * (1 - a / alphas_prev))
    assert sigmas.dtype == torch.float64
    np.testing.assert_array_equal(sigmas.numpy(), expected)
    np.testing.assert_allclose(sigmas.numpy(), 0.7 * np.sqrt((1 - alphas_prev) / (1 - a) * (1 - a / alphas_prev)))


def test_make_schedule_buffers_follow_the_model():
    model = GaussianModel().to(torch.float64)
    sampler = DDIMScheduleSampler(model)
    sampler.make_schedule(20, ddim_eta=1.0, verbose=False)
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "ddim_alphas"):
        buffer = getattr(sampler, name)
        assert buffer.dtype == torch.float32 and buffer.device == model.betas.device, name
    assert sampler.ddim_sqrt_one_minus_alphas.dtype == torch.float32
    ac, ac_prev = sampler.alphas_cumprod, sampler.alphas_cumprod_prev
    posterior_std = torch.sqrt((1 - ac_prev) / (1 - ac) * (1 - ac / ac_prev))
    torch.testing.assert_close(sampler.ddim_sigmas_for_original_num_steps, posterior_std)
