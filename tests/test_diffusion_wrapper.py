"""ldm.models.diffusion.diffusion_wrapper: the wrapper's base class, frozen sub-models and setting errors."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn

from ldm.models.diffusion import ddpm
from ldm.models.diffusion.diffusion_wrapper import DiffusionWrapper, freeze_module
from ldm.util import ConfigError, SettingError, UnsupportedSettingError

SCALE = {"target": "tests.fakes.ScaleUNet"}


def test_the_wrapper_is_a_lightning_module_with_device_and_dtype():
    """As in the original, so code reading ``model.model.device`` / ``.dtype`` works."""
    wrapper = DiffusionWrapper(SCALE, None)
    assert isinstance(wrapper, pl.LightningModule)
    assert wrapper.device == torch.device("cpu") and wrapper.dtype == torch.float32
    wrapper = wrapper.double()
    assert wrapper.dtype == torch.float64
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(wrapper(x, torch.tensor([0])), x)
    assert ddpm.DiffusionWrapper is DiffusionWrapper
    assert list(wrapper.state_dict()) == ["diffusion_model.scale"]


def test_setting_errors_are_config_errors_of_the_original_types():
    assert issubclass(SettingError, ConfigError) and issubclass(SettingError, AssertionError)
    assert issubclass(UnsupportedSettingError, ConfigError) and issubclass(UnsupportedSettingError, NotImplementedError)
    with pytest.raises(SettingError, match="conditioning_key 'film'"):
        DiffusionWrapper(SCALE, "film")


def test_a_frozen_module_stays_in_eval_mode_without_gradients():
    parent = nn.Sequential(freeze_module(nn.Dropout(0.5)), nn.Linear(2, 2))
    parent.train()
    assert not parent[0].training and parent[1].training
    frozen = freeze_module(nn.Linear(2, 2))
    assert not any(p.requires_grad for p in frozen.parameters())
    assert frozen.train(True) is frozen and not frozen.training
