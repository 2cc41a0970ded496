"""ldm.util: building objects from config nodes, with errors that name the node and the key."""

import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import ConfigError, default, instantiate_from_config, mean_flat


def test_builds_target_with_params():
    cfg = OmegaConf.create({"target": "torch.nn.Linear", "params": {"in_features": 3, "out_features": 2}})
    layer = instantiate_from_config(cfg)
    assert isinstance(layer, torch.nn.Linear)
    assert layer.weight.shape == (2, 3)


def test_params_default_to_empty():
    assert isinstance(instantiate_from_config({"target": "torch.nn.Identity"}), torch.nn.Identity)


@pytest.mark.parametrize("sentinel", ["__is_first_stage__", "__is_unconditional__"])
def test_sentinels_build_nothing(sentinel):
    assert instantiate_from_config(sentinel) is None


def test_missing_target_names_the_node():
    with pytest.raises(ConfigError, match=r"model\.params\.unet_config.*'target'"):
        instantiate_from_config(OmegaConf.create({"params": {}}), name="model.params.unet_config")


def test_unresolvable_module_and_attribute():
    with pytest.raises(ConfigError, match="no_such_module"):
        instantiate_from_config({"target": "ldm.no_such_module.Thing"})
    with pytest.raises(ConfigError, match="NoSuchClass"):
        instantiate_from_config({"target": "torch.nn.NoSuchClass"})


def test_unknown_param_key_is_named():
    cfg = {"target": "torch.nn.Linear", "params": {"in_features": 3, "out_features": 2, "bais": False}}
    with pytest.raises(ConfigError, match=r"\['bais'\]"):
        instantiate_from_config(cfg)


def test_missing_required_param_is_named():
    with pytest.raises(ConfigError, match="out_features"):
        instantiate_from_config({"target": "torch.nn.Linear", "params": {"in_features": 3}})


def test_default_and_mean_flat():
    assert default(None, 3) == 3
    assert default(None, lambda: 4) == 4
    assert default(5, 3) == 5
    x = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(mean_flat(x), torch.tensor([2.5, 8.5]))


def test_config_errors_are_also_the_exception_types_of_the_original():
    """The original raises KeyError (no target), ModuleNotFoundError / AttributeError (bad target) and the
    target's TypeError (bad params); code catching those must keep working."""
    with pytest.raises(KeyError, match="target"):
        instantiate_from_config({"params": {}})
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        instantiate_from_config({"target": "ldm.no_such_module.Thing"})
    with pytest.raises(AttributeError, match="NoSuchClass"):
        instantiate_from_config({"target": "torch.nn.NoSuchClass"})
    with pytest.raises(TypeError, match="bais"):
        instantiate_from_config({"target": "torch.nn.Linear", "params": {"in_features": 3, "out_features": 2,
                                                                        "bais": False}})
    with pytest.raises(TypeError, match="out_features"):
        instantiate_from_config({"target": "torch.nn.Linear", "params": {"in_features": 3}})
    try:
        instantiate_from_config({"params": {}}, name="model")
    except KeyError as error:
        assert str(error).startswith("model: expected key 'target'")  # the message, not KeyError's quoted repr
