"""The k-sampler noise schedules against ``tests/refdata/ksamplers`` and their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from ldm.models.diffusion.k_samplers import (
    SCHEDULE_NAMES,
    CompVisDenoiser,
    get_sigmas_exponential,
    get_sigmas_karras,
    get_sigmas_polyexponential,
    get_sigmas_vp,
    schedule_sigmas,
)
from ldm.modules.diffusionmodules.util import make_ddim_timesteps
from tests.ksampler_refmodels import assert_matches_case, load_refdata, make_model

SCHEDULES = load_refdata()["schedules"]
SIGMA_MIN, SIGMA_MAX = SCHEDULES["sigma_min"], SCHEDULES["sigma_max"]
MAKERS = {
    "karras": lambda n: get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX, rho=7.0),
    "exponential": lambda n: get_sigmas_exponential(n, SIGMA_MIN, SIGMA_MAX),
    "polyexponential": lambda n: get_sigmas_polyexponential(n, SIGMA_MIN, SIGMA_MAX, rho=1.0),
    "polyexponential_rho2": lambda n: get_sigmas_polyexponential(n, SIGMA_MIN, SIGMA_MAX, rho=2.0),
    "karras_rho5_0.1_10": lambda n: get_sigmas_karras(n, 0.1, 10.0, rho=5.0),
    "normal": lambda n: CompVisDenoiser(make_model("gmm-eps")).get_sigmas(n),
}
STORED = [key for key in SCHEDULES if "/" in key]


@pytest.fixture(scope="module")
def denoiser() -> CompVisDenoiser:
    return CompVisDenoiser(make_model("gmm-eps"))


@pytest.mark.parametrize("key", STORED)
def test_stored_schedule(key: str) -> None:
    name, n = key.split("/")
    out = MAKERS[name](int(n))
    assert out.dtype == torch.float32 and out[-1] == 0
    assert_matches_case(out, SCHEDULES[key], 0.0, what=key)


@pytest.mark.parametrize("name", ["normal", "karras", "exponential", "polyexponential"])
def test_dispatcher_matches_stored(denoiser: CompVisDenoiser, name: str) -> None:
    for n in (5, 10, 20):
        assert_matches_case(schedule_sigmas(name, n, denoiser), SCHEDULES[f"{name}/{n}"], 0.0, what=name)


def test_uniform_is_normal(denoiser: CompVisDenoiser) -> None:
    torch.testing.assert_close(schedule_sigmas("uniform", 7, denoiser), denoiser.get_sigmas(7), rtol=0, atol=0)


def test_every_schedule_ends_in_zero_and_decreases(denoiser: CompVisDenoiser) -> None:
    for name in SCHEDULE_NAMES:
        sigmas = schedule_sigmas(name, 10, denoiser)
        assert sigmas.dtype == torch.float32 and sigmas[-1] == 0, name
        assert (sigmas[1:] < sigmas[:-1]).all(), name
        assert sigmas[0] <= SIGMA_MAX * (1 + 1e-6), name


def test_simple_takes_every_kth_grid_point(denoiser: CompVisDenoiser) -> None:
    sigmas = schedule_sigmas("simple", 10, denoiser)
    torch.testing.assert_close(sigmas[:-1], denoiser.sigmas[[999, 899, 799, 699, 599, 499, 399, 299, 199, 99]])
    assert len(schedule_sigmas("simple", 3, denoiser)) == 4


def test_ddim_uniform_uses_ddim_timesteps(denoiser: CompVisDenoiser) -> None:
    for n in (10, 7):
        steps = make_ddim_timesteps("uniform", n, 1000, verbose=False)[::-1].copy()
        sigmas = schedule_sigmas("ddim_uniform", n, denoiser)
        alpha_bar = make_model("gmm-eps").alphas_cumprod[torch.from_numpy(steps)]
        torch.testing.assert_close(sigmas[:-1], ((1 - alpha_bar) / alpha_bar).sqrt())


def test_vp_schedule_closed_form() -> None:
    sigmas = get_sigmas_vp(4)
    for t, sigma in zip([1.0, 0.667, 0.334, 0.001], sigmas[:-1].tolist()):
        assert sigma == pytest.approx(math.sqrt(math.exp(19.9 * t * t / 2 + 0.1 * t) - 1), rel=1e-5)
    assert sigmas[-1] == 0


def test_exponential_is_polyexponential_rho1() -> None:
    torch.testing.assert_close(
        get_sigmas_exponential(9, 0.05, 20.0), get_sigmas_polyexponential(9, 0.05, 20.0), rtol=1e-6, atol=0
    )


def test_unknown_schedule_names_the_closest(denoiser: CompVisDenoiser) -> None:
    with pytest.raises(ValueError, match="did you mean 'karras'"):
        schedule_sigmas("karas", 10, denoiser)
    with pytest.raises(ValueError, match="exponential"):
        schedule_sigmas("exponentail", 10, denoiser)
    with pytest.raises(ValueError, match="at least one step"):
        schedule_sigmas("karras", 0, denoiser)


def test_dispatcher_follows_the_denoiser_device_and_case(denoiser: CompVisDenoiser) -> None:
    torch.testing.assert_close(schedule_sigmas("Karras", 10, denoiser), SCHEDULES["karras/10"])
