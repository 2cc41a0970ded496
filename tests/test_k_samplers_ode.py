"""The ODE k-samplers (Euler, Heun, DPM2, LMS, DPM++ 2M, DPM-Solver fast/adaptive) against k-diffusion's runs.

Every case in ``tests/refdata/ksamplers/ksamplers.pt`` whose ``sampler`` is one of these is replayed with its
recipe (README there) and compared at the README tolerance: the output, the σ of every model call, and the
callback's σ̂ and x̂_0 where stored; recorded ``torch.randn_like`` draws (churn) and noise-sampler tensors are
replayed.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pytest
import torch

import ldm.models.diffusion.k_samplers as k_samplers
from ldm.models.diffusion.k_samplers.dpm_adaptive import StepSizeController, fast_orders
from ldm.models.diffusion.k_samplers.ode import lms_coefficients
from tests.ksampler_refmodels import (
    ReplayNoise,
    assert_matches_case,
    assert_sigmas_match,
    callback_recorder,
    case_model,
    case_sigmas,
    cases_of,
    load_refdata,
    make_model,
    replayed_randn_like,
)

SIGMA_SAMPLERS = ("sample_euler", "sample_heun", "sample_dpm_2", "sample_lms", "sample_dpmpp_2m")
RANGE_SAMPLERS = ("sample_dpm_fast", "sample_dpm_adaptive")
CASES = {name: case for sampler in SIGMA_SAMPLERS + RANGE_SAMPLERS for name, case in cases_of(sampler).items()}
NOISE_UNIT = load_refdata()["common"]["noise_unit"]


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Run the case's recipe with the project's samplers; returns out, model-call σs, callback records, noise."""
    model, extra_args = case_model(case)
    records, callback = callback_recorder()
    kwargs = dict(case.get("kwargs", {}))
    sampler = getattr(k_samplers, case["sampler"])
    noise = None
    if case.get("noise", {}).get("kind") == "replay":
        noise = kwargs["noise_sampler"] = ReplayNoise(case["noise_tensors"])
    common = {"extra_args": extra_args, "callback": callback, "disable": True}
    churn = case.get("group") == "churn"
    with replayed_randn_like(case["noise_tensors"]) if churn else contextlib.nullcontext([0]) as draws:
        if case["sampler"] in RANGE_SAMPLERS:
            schedules = load_refdata()["schedules"]
            sigma_min, sigma_max = schedules["sigma_min"], schedules["sigma_max"]
            x = NOISE_UNIT * sigma_max
            if case["sampler"] == "sample_dpm_fast":
                out = sampler(model, x, sigma_min, sigma_max, case["n"], **common, **kwargs)
            else:
                out = sampler(model, x, sigma_min, sigma_max, **common, **kwargs)
        else:
            sigmas = case_sigmas(case)
            out = sampler(model, NOISE_UNIT * sigmas[0], sigmas, **common, **kwargs)
    info = None
    if isinstance(out, tuple):
        out, info = out
    return {"out": out, "nfe": model.sigmas, "records": records, "noise": noise, "draws": draws[0], "info": info}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name: str) -> None:
    case = CASES[name]
    got = run_case(case)
    assert_matches_case(got["out"], case["out"], case["fp64_spread"], what=name)
    assert_sigmas_match(got["nfe"], case["nfe_sigmas"], f"{name} model-call sigmas")
    if "callback_denoised" in case:
        assert_sigmas_match([r["sigma_hat"] for r in got["records"]], case["callback_sigma_hat"], f"{name} sigma_hat")
        for k, record in enumerate(got["records"]):
            spread = case["callback_fp64_spread"][k]
            assert_matches_case(record["denoised"], case["callback_denoised"][k], spread, what=f"{name} denoised {k}")
    if got["noise"] is not None:
        assert_sigmas_match(torch.tensor(got["noise"].calls).reshape(-1, 2), case["noise_calls"], f"{name} noise")
    if case.get("group") == "churn":
        assert got["draws"] == case.get("noise_count", len(case["noise_tensors"]))
    if case.get("info") is not None:
        assert got["info"] == case["info"]


def test_refdata_has_cases_for_every_ode_sampler() -> None:
    assert {case["sampler"] for case in CASES.values()} == set(SIGMA_SAMPLERS + RANGE_SAMPLERS)


@pytest.mark.parametrize("sampler", SIGMA_SAMPLERS)
def test_churn_samplers_draw_once_per_step(sampler: str) -> None:
    denoiser = k_samplers.CompVisDenoiser(make_model("gmm-eps"))
    sigmas = k_samplers.get_sigmas_karras(4, 0.1, 10.0)
    with replayed_randn_like(torch.zeros(10, 2, 4, 8, 8)) as draws:
        getattr(k_samplers, sampler)(denoiser, NOISE_UNIT * 10, sigmas, disable=True)
    assert draws[0] == (4 if sampler in ("sample_euler", "sample_heun", "sample_dpm_2") else 0)


@pytest.mark.parametrize("sampler", SIGMA_SAMPLERS)
def test_unknown_keyword_names_the_closest(sampler: str) -> None:
    denoiser = k_samplers.CompVisDenoiser(make_model("gmm-eps"))
    with pytest.raises(TypeError, match="did you mean 'extra_args'"):
        getattr(k_samplers, sampler)(denoiser, NOISE_UNIT, torch.tensor([1.0, 0.0]), extra_arg={})


def test_lms_coefficients_integrate_polynomials_exactly() -> None:
    nodes = np.array([3.0, 5.0, 8.0, 12.0])  # newest first
    weights = lms_coefficients(nodes, 3.0, 1.5)
    for degree in range(4):  # ∫_3^1.5 τ^d dτ from the values at the nodes
        exact = (1.5 ** (degree + 1) - 3.0 ** (degree + 1)) / (degree + 1)
        assert sum(w * node**degree for w, node in zip(weights, nodes)) == pytest.approx(exact, rel=1e-12)


def test_euler_on_a_point_mass_lands_on_it() -> None:
    """D(z, σ) = c for data at c: every sampler reaches c exactly at σ = 0 (the ODE is z(σ) = c + σ ε)."""

    def point_mass(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, 0.7)

    sigmas = k_samplers.get_sigmas_karras(6, 0.05, 10.0)
    for sampler in SIGMA_SAMPLERS:
        out = getattr(k_samplers, sampler)(point_mass, NOISE_UNIT * 10, sigmas, disable=True)
        torch.testing.assert_close(out, torch.full_like(out, 0.7), rtol=0, atol=1e-5)


def test_dpm_fast_orders_spend_exactly_n_calls() -> None:
    assert fast_orders(10) == [3, 3, 3, 1]
    assert fast_orders(9) == [3, 3, 2, 1]
    assert fast_orders(2) == [2]
    for n in range(1, 30):
        assert sum(fast_orders(n)) == n and len(fast_orders(n)) == n // 3 + 1


def test_step_size_controller_is_an_integral_controller_by_default() -> None:
    control = StepSizeController(0.1, 0.0, 1.0, 0.0, order=2)
    assert control.propose_step(1.0 - 1e-8)  # error 1: factor 1 + atan(0) = 1
    assert control.h == pytest.approx(0.1)
    assert not control.propose_step(16.0)  # factor 1 + atan(1/4 - 1) < 0.81: rejected, h shrinks
    assert control.h == pytest.approx(0.1 * (1 + np.arctan(0.25 - 1)), rel=1e-6)


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_on_a_point_mass(order: int) -> None:
    def point_mass(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, 0.7)

    out, info = k_samplers.sample_dpm_adaptive(
        point_mass, NOISE_UNIT * 10, 0.01, 10.0, order=order, disable=True, return_info=True
    )
    exact = 0.7 + (NOISE_UNIT * 10 - 0.7) * (0.01 / 10)  # the ODE's z(σ) = c + (σ/σ_max)(z_max − c)
    torch.testing.assert_close(out, exact, rtol=0, atol=1e-5)
    assert info["nfe"] == order * info["steps"] and info["n_reject"] == 0
    fast = k_samplers.sample_dpm_fast(point_mass, NOISE_UNIT * 10, 0.01, 10.0, 7, disable=True)
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-5)


def test_dpm_argument_errors() -> None:
    denoiser = k_samplers.CompVisDenoiser(make_model("gmm-eps"))
    with pytest.raises(ValueError, match="order 2 or 3"):
        k_samplers.sample_dpm_adaptive(denoiser, NOISE_UNIT, 0.1, 10.0, order=4)
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        k_samplers.sample_dpm_fast(denoiser, NOISE_UNIT, 0.0, 10.0, 5)
    with pytest.raises(TypeError, match="did you mean 'rtol'"):
        k_samplers.sample_dpm_adaptive(denoiser, NOISE_UNIT, 0.1, 10.0, rtoll=0.1)
    with pytest.raises(TypeError, match="did you mean 's_noise'"):
        k_samplers.sample_dpm_fast(denoiser, NOISE_UNIT, 0.1, 10.0, 5, s_nosie=1.0)
