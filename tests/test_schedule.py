"""ldm.models.diffusion.schedule: the schedule constants and the samplers' discrete-time view against their
defining equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm.models.diffusion.schedule import (
    PERSISTENT_BUFFERS,
    DiscreteSchedule,
    cond_schedule_ids,
    interpolate,
    make_betas,
    schedule_buffers,
)


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
    with pytest.raises(ValueError, match="parameterization 'score'"):
        schedule_buffers(np.array([0.1, 0.2]), 0.0, "score")


def test_cond_schedule_ids_spread_the_first_steps():
    ids = cond_schedule_ids(10, 4)
    assert ids.dtype == torch.long
    assert ids.tolist() == [0, 3, 6, 9, 9, 9, 9, 9, 9, 9]


# --------------------------------------------------------------------------------------------------------
# DiscreteSchedule
# --------------------------------------------------------------------------------------------------------


def _sd_schedule() -> tuple[DiscreteSchedule, np.ndarray]:
    betas = make_betas(None, "linear", 1000, 0.00085, 0.012, 8e-3)
    alphas_cumprod = torch.tensor(np.cumprod(1 - betas), dtype=torch.float32)
    return DiscreteSchedule(alphas_cumprod), alphas_cumprod.double().numpy()


def test_discrete_schedule_at_the_integer_steps():
    schedule, ab = _sd_schedule()
    tau = torch.tensor([0.0, 499.0, 999.0])
    expected = ab[[0, 499, 999]]
    np.testing.assert_allclose(schedule.alpha(tau).numpy(), np.sqrt(expected), rtol=1e-12)
    np.testing.assert_allclose(schedule.sigma(tau).numpy(), np.sqrt(1 - expected), rtol=1e-12)
    np.testing.assert_allclose(schedule.lambda_(tau).numpy(), 0.5 * np.log(expected / (1 - expected)), rtol=1e-12)
    np.testing.assert_allclose(schedule.noise_level(tau).numpy(), np.sqrt((1 - expected) / expected), rtol=1e-12)


def test_discrete_schedule_is_log_linear_between_steps_and_inverts():
    schedule, ab = _sd_schedule()
    np.testing.assert_allclose(float(schedule.alpha(10.25)) ** 2, ab[10] ** 0.75 * ab[11] ** 0.25, rtol=1e-12)
    tau = torch.linspace(0, 999, 37, dtype=torch.float64)
    torch.testing.assert_close(schedule.timestep_from_lambda(schedule.lambda_(tau)), tau, rtol=0, atol=1e-7)
    torch.testing.assert_close(schedule.timestep_from_noise_level(schedule.noise_level(tau)), tau, rtol=0, atol=1e-7)


def test_sampler_tables_are_the_float32_forms_of_alpha_bar():
    """Computed in float32 from the float32 ᾱ, so 1 − ᾱ and 1/ᾱ − 1 near ᾱ = 1 carry ~1e-5 relative error."""
    schedule, ab = _sd_schedule()
    tables = schedule.sampler_tables()
    assert all(t.dtype == torch.float32 and t.shape == (1000,) for t in tables.values())
    for name, value in {
        "alphas_cumprod": ab, "sqrt_alphas_cumprod": np.sqrt(ab), "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ab),
        "log_one_minus_alphas_cumprod": np.log(1 - ab), "sqrt_recip_alphas_cumprod": np.sqrt(1 / ab),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ab - 1),
    }.items():  # fmt: skip
        np.testing.assert_allclose(tables[name].numpy(), value, rtol=1e-4, atol=1e-6, err_msg=name)  # float32 1 − ᾱ


def test_interpolate_is_np_interp():
    xp, fp = np.array([0.0, 1.0, 3.0, 4.5]), np.array([2.0, -1.0, 5.0, 0.5])
    x = np.array([-1.0, 0.0, 0.3, 1.0, 2.2, 4.5, 7.0])
    ours = interpolate(torch.tensor(x), torch.tensor(xp), torch.tensor(fp))
    np.testing.assert_allclose(ours.numpy(), np.interp(x, xp, fp), rtol=1e-15)
