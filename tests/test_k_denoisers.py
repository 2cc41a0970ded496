"""The k-diffusion denoiser wrappers against ``tests/refdata/ksamplers`` (and the rebuilt test models themselves)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ldm.models.diffusion.k_samplers import CompVisDenoiser, CompVisVDenoiser
from tests.ksampler_refmodels import CFG, assert_matches_case, load_refdata, make_model

WRAPPER = load_refdata()["wrapper"]
COMMON = load_refdata()["common"]


@pytest.mark.parametrize("name", ["gmm-eps", "gmm-v", "conv-eps"])
def test_rebuilt_models_reproduce_apply_model(name: str) -> None:
    model = make_model(name)
    x = WRAPPER["forward_x"] / 4
    for j, t in enumerate(WRAPPER["apply_model_t"]):
        ref = WRAPPER["apply_model"][name][j]
        torch.testing.assert_close(model.apply_model(x, t, COMMON["cond"]), ref, rtol=1e-6, atol=1e-6)


def test_rebuilt_model_without_cond() -> None:
    model = make_model("gmm-eps")
    out = model.apply_model(WRAPPER["forward_x"] / 4, WRAPPER["apply_model_t"][1])
    torch.testing.assert_close(out, WRAPPER["apply_model_cond_none_gmm-eps"], rtol=1e-6, atol=1e-6)


def test_x0_variant_is_the_same_posterior() -> None:
    x, t = WRAPPER["forward_x"] / 4, torch.tensor([300.0, 40.5])
    eps = make_model("gmm-eps").apply_model(x.double(), t, COMMON["cond"])
    x0 = make_model("gmm-x0").apply_model(x.double(), t, COMMON["cond"])
    a, b = make_model("gmm-x0").vp_coefficients(t, 2)
    torch.testing.assert_close(a[:, None, None, None] * x0 + b[:, None, None, None] * eps, x.double())


# --------------------------------------------------------------------------------------------------------
# CompVisDenoiser / CompVisVDenoiser
# --------------------------------------------------------------------------------------------------------


def wrap(name: str, quantize: bool = False) -> CompVisDenoiser:
    kind = CompVisVDenoiser if name == "gmm-v" else CompVisDenoiser
    return kind(make_model(name), quantize=quantize)


def test_sigma_grid_and_range() -> None:
    w = wrap("gmm-eps")
    torch.testing.assert_close(w.sigmas, WRAPPER["sigmas"], rtol=0, atol=0)
    torch.testing.assert_close(w.log_sigmas, WRAPPER["log_sigmas"], rtol=0, atol=0)
    assert w.sigma_min.item() == load_refdata()["schedules"]["sigma_min"]
    assert w.sigma_max.item() == load_refdata()["schedules"]["sigma_max"]
    torch.testing.assert_close(w.get_sigmas()[:-1], w.sigmas.flip(0), rtol=0, atol=0)
    assert {"sigmas", "log_sigmas"} <= {name for name, _ in w.named_buffers(recurse=False)}


def test_sigma_to_t_interpolates_log_sigma() -> None:
    w = wrap("gmm-eps")
    t = w.sigma_to_t(WRAPPER["sigma_in"])
    assert t.dtype == torch.float32
    torch.testing.assert_close(t, WRAPPER["sigma_to_t"], rtol=0, atol=0)


def test_sigma_to_t_quantized() -> None:
    t = wrap("gmm-eps").sigma_to_t(WRAPPER["sigma_in_quantize"], quantize=True)
    assert t.dtype == torch.int64
    assert torch.equal(t, WRAPPER["sigma_to_t_quantize"])
    assert torch.equal(wrap("gmm-eps", quantize=True).sigma_to_t(WRAPPER["sigma_in_quantize"]), t)


def test_t_to_sigma() -> None:
    sigma = wrap("gmm-eps").t_to_sigma(WRAPPER["t_in"])
    torch.testing.assert_close(sigma, WRAPPER["t_to_sigma"], rtol=0, atol=0)


def test_round_trip_on_the_grid() -> None:
    w = wrap("gmm-eps")
    t = torch.tensor([0.0, 3.25, 417.5, 999.0])
    torch.testing.assert_close(w.sigma_to_t(w.t_to_sigma(t)), t, rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", ["gmm-eps", "gmm-v", "conv-eps"])
def test_forward_matches_k_diffusion(name: str) -> None:
    w = wrap(name)
    for j, pair in enumerate(WRAPPER["forward_sigma_pairs"]):
        out = w(WRAPPER["forward_x"], torch.tensor(pair), cond=COMMON["cond"])
        assert_matches_case(out, WRAPPER["forward"][name][j], 0.0, what=f"{name} pair {j}")


def test_forward_quantized() -> None:
    w = wrap("gmm-eps", quantize=True)
    for j, pair in enumerate(WRAPPER["forward_sigma_pairs"]):
        out = w(WRAPPER["forward_x"], torch.tensor(pair), cond=COMMON["cond"])
        assert_matches_case(out, WRAPPER["forward_quantize_gmm-eps"][j], 0.0, what=f"pair {j}")


def test_x0_model_denoises_like_the_eps_model() -> None:
    sigma = torch.tensor([5.0, 0.2])
    eps_out = CompVisDenoiser(make_model("gmm-eps"))(WRAPPER["forward_x"], sigma, cond=COMMON["cond"])
    x0_out = CompVisDenoiser(make_model("gmm-x0"))(WRAPPER["forward_x"], sigma, cond=COMMON["cond"])
    v_out = CompVisDenoiser(make_model("gmm-v"))(WRAPPER["forward_x"], sigma, cond=COMMON["cond"])
    torch.testing.assert_close(x0_out, eps_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(v_out, eps_out, rtol=0, atol=1e-5)


def test_v_denoiser_reads_v_whatever_the_model_says() -> None:
    v_model = make_model("gmm-v")
    model = SimpleNamespace(
        alphas_cumprod=v_model.alphas_cumprod, parameterization="eps", apply_model=v_model.apply_model
    )
    out = CompVisVDenoiser(model)(WRAPPER["forward_x"], torch.tensor([3.0, 1.0]), cond=COMMON["cond"])
    assert_matches_case(out, WRAPPER["forward"]["gmm-v"][1], 0.0)


def test_guidance_in_one_doubled_batch_equals_cfg_on_denoised() -> None:
    w = wrap("conv-eps")
    calls = []
    inner = w.inner_model.apply_model
    w.inner_model.apply_model = lambda x, t, c: calls.append(len(x)) or inner(x, t, c)
    x, sigma = WRAPPER["forward_x"], torch.tensor([3.0, 0.5])
    guided = w(x, sigma, cond=COMMON["cond"], uncond=COMMON["uncond"], cond_scale=5.0)
    assert calls == [4]
    reference = CFG(wrap("conv-eps"))(x, sigma, COMMON["cond"], COMMON["uncond"], 5.0)
    torch.testing.assert_close(guided, reference, rtol=0, atol=1e-5)


def test_extra_keywords_reach_apply_model() -> None:
    w = wrap("gmm-eps")
    seen = {}
    inner = w.inner_model.apply_model
    w.inner_model.apply_model = lambda x, t, c, **kw: seen.update(kw) or inner(x, t, c)
    w(WRAPPER["forward_x"], torch.tensor([1.0, 1.0]), cond=COMMON["cond"], control="hint")
    assert seen == {"control": "hint"}


def test_one_sigma_for_the_whole_batch() -> None:
    w = wrap("gmm-eps")
    x = WRAPPER["forward_x"]
    torch.testing.assert_close(w(x, torch.tensor(2.0)), w(x, torch.tensor([2.0, 2.0])), rtol=0, atol=0)


def test_moves_with_to() -> None:
    w = wrap("gmm-eps").to(torch.float64)
    assert w.sigmas.dtype == torch.float64 and w.log_sigmas.dtype == torch.float64
