"""``ldm.util.AdamWwithEMAandWings``: AdamW steps plus the parameter average in the optimizer state."""

from __future__ import annotations

import pytest
import torch

from ldm.util import AdamWwithEMAandWings


def run(optimizer_cls, steps: int, **kwargs):
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(5))
    optimizer = optimizer_cls([param], lr=0.1, **kwargs)
    iterates = []
    for k in range(steps):
        optimizer.zero_grad()
        ((param - k) ** 2).sum().backward()
        optimizer.step()
        iterates.append(param.detach().clone())
    return param, optimizer, torch.stack(iterates)


def test_steps_are_adamw_and_the_average_is_the_running_mean():
    """ema_power 1, ema_decay 0.9999: d_k = 1 − 1/k for 10 steps, so θ̄ is the mean of the 10 iterates."""
    param, optimizer, iterates = run(AdamWwithEMAandWings, 10)
    reference, _, _ = run(torch.optim.AdamW, 10)
    torch.testing.assert_close(param, reference, rtol=0, atol=0)
    torch.testing.assert_close(optimizer.state[param]["param_exp_avg"], iterates.mean(0))


def test_decay_cap_and_state_dict():
    """ema_decay 0.5 caps d_k from step 2 on: θ̄_k = (θ̄_{k−1} + θ_k) / 2."""
    param, optimizer, iterates = run(AdamWwithEMAandWings, 3, ema_decay=0.5)
    expected = ((iterates[0] + iterates[1]) / 2 + iterates[2]) / 2
    torch.testing.assert_close(optimizer.state[param]["param_exp_avg"], expected)
    saved = optimizer.state_dict()
    assert saved["param_groups"][0]["ema_decay"] == 0.5 and "param_exp_avg" in saved["state"][0]
    with pytest.raises(ValueError, match="ema_decay"):
        AdamWwithEMAandWings([param], ema_decay=1.5)
