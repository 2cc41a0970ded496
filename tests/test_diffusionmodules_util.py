"""ldm.modules.diffusionmodules.util: beta schedules against the original, timestep embedding closed form,
gradient checkpointing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from ldm.modules.diffusionmodules.util import checkpoint, make_beta_schedule, timestep_embedding
from tests.helpers import REFDATA


@pytest.fixture(scope="module")
def schedules() -> dict:
    return torch.load(REFDATA / "vectors" / "schedules.pt", weights_only=True)


def test_make_beta_schedule_matches_original(schedules):
    checked = set()
    for name, entry in schedules.items():
        kw = entry["kwargs"]
        betas = make_beta_schedule(kw["beta_schedule"], kw["timesteps"], linear_start=kw["linear_start"],
                                   linear_end=kw["linear_end"], cosine_s=kw["cosine_s"])
        assert betas.dtype == np.float64, name
        np.testing.assert_allclose(betas, entry["make_beta_schedule_float64"].numpy(), rtol=1e-12, atol=0, err_msg=name)
        checked.add(kw["beta_schedule"])
    assert checked == {"linear", "cosine", "sqrt_linear", "sqrt"}


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="'quadratic'"):
        make_beta_schedule("quadratic", 10)


@pytest.mark.parametrize("dim", [8, 7])
def test_timestep_embedding_closed_form(dim):
    t = torch.tensor([0, 1, 17, 999])
    emb = timestep_embedding(t, dim, max_period=10000)
    half = dim // 2
    expected = torch.zeros(4, dim, dtype=torch.float64)
    for i in range(half):
        freq = math.exp(-math.log(10000) * i / half)
        expected[:, i] = torch.cos(t.double() * freq)
        expected[:, half + i] = torch.sin(t.double() * freq)
    assert emb.shape == (4, dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.double(), expected, rtol=0, atol=1e-4)  # float32 arguments up to t·ω ≈ 1e3
    torch.testing.assert_close(timestep_embedding(t, 6, repeat_only=True), t[:, None].expand(4, 6))


def test_checkpoint_equal_grads_and_recomputation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))
    calls = []
    net[0].register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(3, 4, requires_grad=True)
    grads = {}
    for flag in (True, False):
        calls.clear()
        net.zero_grad()
        x.grad = None
        out = checkpoint(net, (x,), net.parameters(), flag)
        out.square().sum().backward()
        assert len(calls) == (2 if flag else 1)
        grads[flag] = [x.grad.clone()] + [p.grad.clone() for p in net.parameters()]
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    calls.clear()
    with torch.no_grad():
        checkpoint(net, (x,), net.parameters(), True)
    assert calls == [1]


def test_betas_for_alpha_bar_is_the_discretised_ratio() -> None:
    from ldm.modules.diffusionmodules.util import betas_for_alpha_bar

    alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = betas_for_alpha_bar(1000, alpha_bar)
    assert betas.shape == (1000,) and betas.dtype == np.float64
    assert betas[0] == pytest.approx(1 - alpha_bar(0.001) / alpha_bar(0.0))
    assert betas[-1] == 0.999  # 1 − ᾱ(1)/ᾱ(0.999) = 1 exactly, clipped to max_beta
    np.testing.assert_allclose(betas, make_beta_schedule("cosine", 1000), rtol=1e-12, atol=1e-15)


def test_hybrid_conditioner_wraps_both_conditionings() -> None:
    from ldm.modules.diffusionmodules.util import HybridConditioner

    torch.manual_seed(0)
    hybrid = HybridConditioner({"target": "torch.nn.Identity"},
                               {"target": "torch.nn.Linear", "params": {"in_features": 3, "out_features": 2}})
    concat, tokens = torch.randn(1, 4, 2, 2), torch.randn(1, 5, 3)
    out = hybrid(concat, tokens)
    assert list(out) == ["c_concat", "c_crossattn"]
    assert out["c_concat"][0] is concat
    torch.testing.assert_close(out["c_crossattn"][0], hybrid.crossattn_conditioner(tokens))
