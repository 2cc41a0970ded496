"""The k-diffusion denoiser wrappers against ``tests/refdata/ksamplers`` (and the rebuilt test models themselves)."""

from __future__ import annotations

import pytest
import torch

from tests.ksampler_refmodels import load_refdata, make_model

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
