"""ldm.modules.ema.LitEma: warm-up decay against hand values, checkpoint key names, store/copy_to/restore."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ldm.modules.ema import LitEma
from ldm.util import instantiate_from_config
from tests.helpers import REFDATA, load_manifest, state_dict_manifest


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.frozen = nn.Parameter(torch.zeros(3), requires_grad=False)


def test_buffers_and_key_names_match_original_checkpoints():
    unet = instantiate_from_config(OmegaConf.load(REFDATA / "configs" / "unet_sdv1_tiny.yaml").model)
    wrapper = nn.Module()  # DiffusionWrapper holds the UNet as `diffusion_model`
    wrapper.diffusion_model = unet
    ema = LitEma(wrapper)
    expected = {k: v for k, v in load_manifest("ldm-tiny-use-ema.tsv").items() if k.startswith("model_ema.")}
    got = {f"model_ema.{k}": v for k, v in state_dict_manifest(ema).items()}
    assert got == expected
    assert ema.m_name2s_name["diffusion_model.input_blocks.0.0.weight"] == "diffusion_modelinput_blocks00weight"


def test_only_trainable_parameters_are_shadowed():
    ema = LitEma(Toy())
    assert set(ema.state_dict()) == {"decay", "num_updates", "layerweight", "layerbias"}
    assert ema.decay.dtype == torch.float32 and ema.num_updates.dtype == torch.int32
    assert ema.decay.shape == ema.num_updates.shape == ()


def test_warm_up_decay_against_hand_values():
    torch.manual_seed(0)
    model = Toy()
    ema = LitEma(model, decay=0.5)
    shadow = model.layer.weight.detach().clone()
    for n, value in enumerate([1.0, -2.0, 3.0, 0.5], start=1):
        with torch.no_grad():
            model.layer.weight.fill_(value)
        ema(model)
        decay = min(0.5, (1 + n) / (10 + n))  # 2/11, 3/12, 4/13, then the cap 0.5 from n = 8 on
        shadow = shadow - (1 - decay) * (shadow - value)
        assert int(ema.num_updates) == n
        torch.testing.assert_close(ema.layerweight, shadow, rtol=1e-6, atol=1e-6)
    for n in range(5, 9):
        ema(model)
        shadow = shadow - (1 - min(0.5, (1 + n) / (10 + n))) * (shadow - 0.5)
    torch.testing.assert_close(ema.layerweight, shadow, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ema.decay, torch.tensor(0.5))


def test_without_num_updates_the_decay_is_constant():
    model = Toy()
    ema = LitEma(model, decay=0.9, use_num_upates=False)
    assert int(ema.num_updates) == -1
    start = model.layer.bias.detach().clone()
    with torch.no_grad():
        model.layer.bias.add_(1.0)
    ema(model)
    ema(model)
    assert int(ema.num_updates) == -1
    torch.testing.assert_close(ema.layerbias, start + 1.0 - 0.9**2)


def test_store_copy_to_restore_round_trip():
    torch.manual_seed(0)
    model = Toy()
    ema = LitEma(model)
    with torch.no_grad():
        model.layer.weight.mul_(3.0)
    trained = [p.detach().clone() for p in model.parameters()]
    ema.store(model.parameters())
    ema.copy_to(model)
    torch.testing.assert_close(model.layer.weight, ema.layerweight)
    assert not torch.equal(model.layer.weight, trained[0])
    ema.restore(model.parameters())
    for p, q in zip(model.parameters(), trained, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_errors():
    with pytest.raises(ValueError, match="between 0 and 1"):
        LitEma(Toy(), decay=1.5)
    ema = LitEma(Toy())
    other = Toy()
    other.extra = nn.Linear(1, 1)
    with pytest.raises(KeyError, match="extra.weight"):
        ema(other)
