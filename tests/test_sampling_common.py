"""The samplers' shared pieces: conditioning concatenation, the guided model call, the DDIM schedule helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm.models.diffusion.sampling_common import DDIMScheduleSampler, concat_conditionings, guided_eps
from ldm.modules.diffusionmodules.util import make_ddim_sampling_parameters, make_ddim_timesteps
from tests.sampler_fakes import GaussianEpsModel


def test_concat_conditionings_tensor_list_dict():
    uc, c = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    assert torch.equal(concat_conditionings(uc, c), torch.cat([uc, c]))
    out = concat_conditionings(
        {"c_concat": [uc[:, :1]], "c_crossattn": [uc, uc]}, {"c_concat": [c[:, :1]], "c_crossattn": [c, 2 * c]}
    )
    assert set(out) == {"c_concat", "c_crossattn"}
    assert torch.equal(out["c_concat"][0], torch.cat([uc[:, :1], c[:, :1]]))
    assert torch.equal(out["c_crossattn"][1], torch.cat([uc, 2 * c]))
    with pytest.raises(TypeError, match="same keys"):
        concat_conditionings({"c_crossattn": [uc]}, {"c_concat": [c]})
    with pytest.raises(TypeError, match="list of 2"):
        concat_conditionings([uc], [c, c])


def test_guided_eps_is_one_doubled_call_with_the_cfg_combination():
    model = GaussianEpsModel(mu=0.3, sigma=0.7)
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([10, 500, 900])
    c, uc = torch.randn(3, 1, 8), torch.zeros(3, 1, 8)
    e_c, e_u = model.apply_model(x, t, c), model.apply_model(x, t, uc)
    model.calls.clear()
    guided = guided_eps(model, x, t, c, uc, 7.5)
    assert model.calls == [6]
    torch.testing.assert_close(guided, e_u + 7.5 * (e_c - e_u), rtol=1e-5, atol=1e-5)


def test_guided_eps_scale_one_or_no_uc_runs_the_model_once_on_the_batch():
    model = GaussianEpsModel()
    x, t, c = torch.randn(2, 1, 4, 4), torch.tensor([3, 700]), torch.randn(2, 1, 8)
    plain = model.apply_model(x, t, c)
    model.calls.clear()
    assert torch.equal(guided_eps(model, x, t, c, torch.zeros_like(c), 1.0), plain)
    assert torch.equal(guided_eps(model, x, t, c, None, 5.0), plain)
    assert model.calls == [2, 2]


def test_guided_eps_dict_conditioning_equals_tensor_path():
    model = GaussianEpsModel()
    x, t = torch.randn(2, 1, 4, 4), torch.tensor([100, 800])
    c, uc = torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    as_tensor = guided_eps(model, x, t, c, uc, 3.0)
    as_dict = guided_eps(model, x, t, {"c_crossattn": [c]}, {"c_crossattn": [uc]}, 3.0)
    assert torch.equal(as_tensor, as_dict)


def test_make_ddim_timesteps_matches_the_original_rule():
    steps = make_ddim_timesteps("uniform", 10, 1000, verbose=False)
    assert steps.dtype == np.int64 and steps.tolist() == list(range(1, 1000, 100))
    assert make_ddim_timesteps("uniform", 30, 1000, verbose=False).tolist() == [1 + 33 * k for k in range(31)]
    quad = make_ddim_timesteps("quad", 5, 1000, verbose=False)
    assert quad.tolist() == (np.floor(np.linspace(0, np.sqrt(800), 5) ** 2) + 1).astype(int).tolist()
    with pytest.raises(ValueError, match="past the model's last step"):
        make_ddim_timesteps("uniform", 1000, 1000, verbose=False)
    with pytest.raises(NotImplementedError, match="ddim_discretize"):  # the original's exception type
        make_ddim_timesteps("cubic", 10, 1000, verbose=False)


def test_make_ddim_sampling_parameters_types_and_eq16():
    """σ = η √((1 − ᾱ_prev)/(1 − ᾱ) · (1 − ᾱ/ᾱ_prev)), bit-identical to the original's mixed numpy/torch
    expression (which takes 1/(1 − ᾱ) in float32)."""
    alphacums = GaussianEpsModel().alphas_cumprod
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
    model = GaussianEpsModel().to(torch.float64)
    sampler = DDIMScheduleSampler(model)
    sampler.make_schedule(20, ddim_eta=1.0, verbose=False)
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "ddim_alphas"):
        buffer = getattr(sampler, name)
        assert buffer.dtype == torch.float32 and buffer.device == model.betas.device, name
    assert sampler.ddim_sqrt_one_minus_alphas.dtype == torch.float32
    ac, ac_prev = sampler.alphas_cumprod, sampler.alphas_cumprod_prev
    posterior_std = torch.sqrt((1 - ac_prev) / (1 - ac) * (1 - ac / ac_prev))
    torch.testing.assert_close(sampler.ddim_sigmas_for_original_num_steps, posterior_std)
    short = GaussianEpsModel()
    short.num_timesteps = 999
    with pytest.raises(ValueError, match="every timestep"):
        DDIMScheduleSampler(short).make_schedule(10, verbose=False)
