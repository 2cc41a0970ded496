"""The released LDM model-zoo configs (``models/**/config.yaml``, and the retrieval-augmented model's
``configs/retrieval-augmented-diffusion/768x768.yaml``) build offline, full size, on the meta device.

Also: ``taming.*`` targets resolve through the one alias table (logged once) when taming-transformers is absent,
a ``taming.*`` target without an equivalent fails with an error naming it and the fix, and ``DummyLoss`` is a
weightless placeholder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm import taming_aliases
from ldm.models.autoencoder import VQModel
from ldm.modules.losses import DummyLoss
from ldm.modules.losses.vqperceptual import VQLPIPSWithDiscriminator
from ldm.util import ConfigError, get_obj_from_str, instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
ZOO = sorted(path.relative_to(ROOT).as_posix() for path in ROOT.glob("models/**/config.yaml"))
RELEASED = {
    *(f"models/first_stage_models/{name}/config.yaml"
      for name in ("kl-f4", "kl-f8", "kl-f16", "kl-f32", "vq-f4", "vq-f4-noattn", "vq-f8", "vq-f8-n256", "vq-f16")),
    *(f"models/ldm/{name}/config.yaml"
      for name in ("bsr_sr", "celeba256", "cin256", "ffhq256", "inpainting_big", "layout2img-openimages256",
                   "lsun_beds256", "lsun_churches256", "semantic_synthesis256", "semantic_synthesis512",
                   "text2img256")),
}
#: Shipped configs of released models whose checkpoints have no model-zoo folder.
RDM_CONFIG = "configs/retrieval-augmented-diffusion/768x768.yaml"


@pytest.fixture
def no_taming(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if taming-transformers were not installed, with no alias announced yet."""
    monkeypatch.setattr(taming_aliases, "taming_installed", lambda: False)
    monkeypatch.setattr(taming_aliases, "_announced", set())


def _model_config(relative: str):
    return OmegaConf.load(ROOT / relative).model


def test_every_released_config_is_shipped() -> None:
    assert set(ZOO) == RELEASED


def test_zoo_configs_name_no_checkpoint_file() -> None:
    """The released configs carry no ``ckpt_path``: their weights are the ``model.ckpt`` a script loads."""
    for relative in ZOO:
        assert "ckpt_path" not in (ROOT / relative).read_text(), relative


@pytest.mark.parametrize("relative", [*ZOO, RDM_CONFIG])
def test_zoo_config_builds_offline_on_meta(relative: str, no_taming: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _model_config(relative)
    with torch.device("meta"):
        model = instantiate_from_config(config)
    assert type(model) is get_obj_from_str(config.target)
    parameters = list(model.parameters())
    assert parameters and all(p.is_meta for p in parameters)


def test_vq_first_stage_loss_resolves_to_ours(no_taming: None) -> None:
    config = _model_config("models/first_stage_models/vq-f4/config.yaml")
    assert config.params.lossconfig.target.startswith("taming.")
    with torch.device("meta"):
        model = instantiate_from_config(config)
    assert isinstance(model, VQModel)
    assert isinstance(model.loss, VQLPIPSWithDiscriminator)
    assert model.loss.codebook_weight == config.params.lossconfig.params.codebook_weight


def test_missing_first_stage_checkpoint_names_the_key(tmp_path: Path) -> None:
    config = _model_config("models/ldm/cin256/config.yaml")
    missing = tmp_path / "absent" / "model.ckpt"
    config.params.first_stage_config.params.ckpt_path = str(missing)
    with pytest.raises(FileNotFoundError, match=r"first_stage_config\.params\.ckpt_path"), torch.device("meta"):
        instantiate_from_config(config)


def test_inpainting_first_stage_holds_no_loss_weights() -> None:
    with torch.device("meta"):
        model = instantiate_from_config(_model_config("models/ldm/inpainting_big/config.yaml"))
    assert isinstance(model.first_stage_model.loss, DummyLoss)
    assert not any(key.startswith("first_stage_model.loss.") for key in model.state_dict())


def test_dummy_loss_has_no_state_and_refuses_to_compute() -> None:
    loss = instantiate_from_config({"target": "ldm.modules.losses.contperceptual.DummyLoss"})
    assert loss.state_dict() == {}
    with pytest.raises(RuntimeError, match="VQLPIPSWithDiscriminator"):
        loss(torch.zeros(()), torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), 0, 0)


def test_every_alias_points_at_an_object_here() -> None:
    for taming_path, ours in taming_aliases.TAMING_ALIASES.items():
        assert taming_path.startswith("taming.")
        assert ours.startswith("ldm.")
        get_obj_from_str(ours)


def test_alias_is_logged_once(no_taming: None, caplog: pytest.LogCaptureFixture) -> None:
    target = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"
    with caplog.at_level(logging.INFO, logger=taming_aliases.__name__):
        first = get_obj_from_str(target)
        second = get_obj_from_str(target)
    assert first is second is VQLPIPSWithDiscriminator
    records = [r for r in caplog.records if r.name == taming_aliases.__name__]
    assert len(records) == 1
    assert target in records[0].getMessage()
    assert "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator" in records[0].getMessage()


def test_unknown_taming_target_names_it_and_the_fix(no_taming: None) -> None:
    target = "taming.models.cond_transformer.Net2NetTransformer"
    with pytest.raises(ConfigError) as caught:
        instantiate_from_config({"target": target, "params": {}})
    assert isinstance(caught.value, ModuleNotFoundError)
    message = str(caught.value)
    assert target in message
    assert "pip install taming-transformers" in message


def test_installed_taming_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taming_aliases, "taming_installed", lambda: True)
    target = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"
    assert taming_aliases.resolve_target(target) == target


def test_non_taming_targets_pass_through(no_taming: None) -> None:
    assert taming_aliases.resolve_target("ldm.modules.losses.DummyLoss") == "ldm.modules.losses.DummyLoss"


#: Keys naming released weight or statistics files, which the architecture check does not need.
WEIGHT_FILE_KEYS = ("ckpt_path", "clip_stats_path")
# Keys that only make sense with a weight file: ``reset_ema: true`` refuses to build without a ``ckpt_path``.
NEEDS_WEIGHT_FILE = {"reset_ema": False}


def _without_weight_files(node):
    """A plain copy of a config node with every weight-file key set to null (a missing one is tested above) and
    the options that need a weight file turned off."""
    if isinstance(node, dict):
        return {key: None if key in WEIGHT_FILE_KEYS else NEEDS_WEIGHT_FILE.get(key, _without_weight_files(value))
                for key, value in node.items()}
    if isinstance(node, list):
        return [_without_weight_files(value) for value in node]
    return node


SHIPPED = sorted(path.relative_to(ROOT).as_posix() for pattern in ("configs/**/*.yaml", "models/**/config.yaml")
                 for path in ROOT.glob(pattern) if "model" in OmegaConf.load(path))


def test_every_shipped_config_is_enumerated() -> None:
    assert len(SHIPPED) >= 45 and RDM_CONFIG in SHIPPED and "configs/stable-diffusion/v2-inference-v.yaml" in SHIPPED


@pytest.mark.parametrize("relative", SHIPPED)
def test_every_shipped_config_builds_on_meta(relative: str, no_taming: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every config this repository ships (original, demo and zoo) builds full size on the meta device, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / relative).model, resolve=False)
    config = OmegaConf.create(_without_weight_files(raw))
    with torch.device("meta"):
        model = instantiate_from_config(config)
    assert type(model) is get_obj_from_str(config.target)
    assert any(p.is_meta for p in model.parameters())
