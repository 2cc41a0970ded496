"""ldm.lr_scheduler: multipliers at chosen steps against the closed forms (warm-up, cosine, linear, cycles)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from omegaconf import OmegaConf

from ldm.lr_scheduler import LambdaLinearScheduler, LambdaWarmUpCosineScheduler, LambdaWarmUpCosineScheduler2
from ldm.util import instantiate_from_config


def test_warm_up_cosine():
    s = LambdaWarmUpCosineScheduler(warm_up_steps=10, lr_min=0.1, lr_max=1.0, lr_start=0.0, max_decay_steps=110)
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))  # halfway: 0.55
    assert s(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(0.25 * math.pi)))
    assert s(110) == pytest.approx(0.1)
    assert s(10_000) == pytest.approx(0.1)
    assert s.last_lr == pytest.approx(0.1)


def test_warm_up_cosine_2_cycles():
    s = LambdaWarmUpCosineScheduler2(
        warm_up_steps=[10, 0], f_min=[0.1, 0.0], f_max=[1.0, 0.5], f_start=[0.0, 0.5], cycle_lengths=[100, 50]
    )
    assert s.cum_cycles.tolist() == [0, 100, 150]
    assert s(4) == pytest.approx(0.4)
    assert s(55) == pytest.approx(0.1 + 0.45 * (1 + math.cos(0.5 * math.pi)))  # t = 45/90
    assert s(100) == pytest.approx(0.1)  # a cycle's last step still belongs to it
    assert s(101) == pytest.approx(0.25 * (1 + math.cos(math.pi / 50)))  # cycle 1, step 1
    assert s(150) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="past the last cycle"):
        s(151)


def test_linear_scheduler_as_in_stable_diffusion_config():
    # configs/stable-diffusion/v1-*.yaml: warm_up_steps [10000], cycle_lengths [1e13], f_start [1e-6], f_max/f_min [1.]
    s = LambdaLinearScheduler(
        warm_up_steps=[10000], cycle_lengths=[10000000000000], f_start=[1.0e-6], f_max=[1.0], f_min=[1.0]
    )
    assert s(0) == pytest.approx(1e-6)
    assert s(5000) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert s(10000) == pytest.approx(1.0)
    assert s(10**6) == pytest.approx(1.0)
    decaying = LambdaLinearScheduler(warm_up_steps=[2, 2], f_min=[0.0, 0.5], f_max=[1.0, 1.0], f_start=[0.0, 0.0],
                                     cycle_lengths=[10, 10])
    assert [decaying(n) for n in (1, 2, 5, 10)] == pytest.approx([0.5, 0.8, 0.5, 0.0])
    assert decaying(16) == pytest.approx(0.5 + 0.5 * 4 / 10)  # cycle 1, step 6


def test_mismatched_cycle_lists_raise():
    with pytest.raises(ValueError, match="same length"):
        LambdaWarmUpCosineScheduler2(warm_up_steps=[1], f_min=[0.0, 0.0], f_max=[1.0], f_start=[0.0],
                                     cycle_lengths=[10])


def test_drives_lambda_lr_and_logs(caplog):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    schedule = LambdaWarmUpCosineScheduler(4, 0.0, 1.0, 0.0, 8, verbosity_interval=2)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule)
    with caplog.at_level(logging.INFO, logger="ldm.lr_scheduler"):
        for _ in range(2):
            optimizer.step()
            lr_scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.0 * 0.5)
    assert "step 2," in caplog.text


def test_builds_from_original_scheduler_config():
    config = OmegaConf.create(
        {
            "target": "ldm.lr_scheduler.LambdaLinearScheduler",
            "params": {"warm_up_steps": [10000], "cycle_lengths": [10000000000000], "f_start": [1.0e-6],
                       "f_max": [1.0], "f_min": [1.0]},
        }
    )
    schedule = instantiate_from_config(config)
    assert schedule(2500) == pytest.approx(1e-6 + (1 - 1e-6) * 0.25)
