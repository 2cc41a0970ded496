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
