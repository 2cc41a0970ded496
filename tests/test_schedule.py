"""ldm.models.diffusion.schedule: the schedule constants against their defining equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm.models.diffusion.schedule import PERSISTENT_BUFFERS, cond_schedule_ids, make_betas, schedule_buffers


def test_given_betas_override_the_named_schedule():
    betas = make_betas([0.1, 0.2, 0.3], "cosine", 1000, 1e-4, 2e-2, 8e-3)
    assert betas.dtype == np.float64
    np.testing.assert_array_equal(betas, [0.1, 0.2, 0.3])


def test_buffers_follow_their_equations():
    betas = np.array([0.1, 0.2, 0.3])
    buffers = schedule_buffers(betas, v_posterior=0.0, parameterization="eps")
    alphas_cumprod = np.cumprod(1 - betas)
    prev = np.array([1.0, *alphas_cumprod[:-1]])
    expected = {
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / alphas_cumprod - 1),
        "posterior_variance": betas * (1 - prev) / (1 - alphas_cumprod),
        "posterior_mean_coef1": betas * np.sqrt(prev) / (1 - alphas_cumprod),
        "posterior_mean_coef2": (1 - prev) * np.sqrt(1 - betas) / (1 - alphas_cumprod),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(buffers[name].numpy(), value, rtol=1e-6, err_msg=name)
    assert set(buffers) == {*PERSISTENT_BUFFERS, "lvlb_weights"}
    assert all(b.dtype == torch.float32 and b.shape == (3,) for b in buffers.values())
    # log β̃ is clipped where β̃ = 0 (t = 0); the first VLB weight copies the second (the first is infinite)
    assert buffers["posterior_log_variance_clipped"][0] == pytest.approx(np.log(1e-20))
    assert buffers["lvlb_weights"][0] == buffers["lvlb_weights"][1]
    t = 2
    lvlb = betas[t] ** 2 / (2 * expected["posterior_variance"][t] * (1 - betas[t]) * (1 - alphas_cumprod[t]))
    assert buffers["lvlb_weights"][t].item() == pytest.approx(lvlb, rel=1e-6)


def test_v_posterior_interpolates_towards_beta():
    betas = np.linspace(0.01, 0.2, 5)
    tilde = schedule_buffers(betas, 0.0, "eps")["posterior_variance"]
    mixed = schedule_buffers(betas, 0.25, "eps")["posterior_variance"]
    torch.testing.assert_close(mixed, 0.75 * tilde + 0.25 * torch.tensor(betas, dtype=torch.float32))


def test_unknown_parameterization_is_refused():
    with pytest.raises(ValueError, match="parameterization 'v'"):
        schedule_buffers(np.array([0.1, 0.2]), 0.0, "v")


def test_cond_schedule_ids_spread_the_first_steps():
    ids = cond_schedule_ids(10, 4)
    assert ids.dtype == torch.long
    assert ids.tolist() == [0, 3, 6, 9, 9, 9, 9, 9, 9, 9]
