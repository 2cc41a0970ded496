"""Safe checkpoint IO (ldm/checkpoint.py) and the converter script (scripts/convert_checkpoint.py)."""

from __future__ import annotations

import logging
import os
import pathlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ldm.checkpoint import (
    CheckpointError,
    ModelCheckpointStub,
    UnsafeCheckpointError,
    apply_state_dict,
    ema_key,
    load_checkpoint,
    load_state_dict_file,
)
from scripts.convert_checkpoint import main as convert


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 3, 3, 3, generator=g),
        "model.diffusion_model.out.2.bias": torch.randn(4, generator=g).half(),
        "first_stage_model.decoder.conv_out.weight": torch.randn(3, 4, generator=g).bfloat16(),
        "betas": torch.linspace(0.1, 0.2, 5, dtype=torch.float64),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77).unsqueeze(0),
    }


def _rewrite_globals(path: Path, renames: dict[bytes, bytes]) -> None:
    """Rename globals inside a torch zip checkpoint (protocol-2 GLOBAL opcodes are ``module\\nname\\n`` text)."""
    with zipfile.ZipFile(path) as src:
        entries = [(info.filename, src.read(info.filename)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for name, data in entries:
            if name.endswith("data.pkl"):
                for old, new in renames.items():
                    assert old in data, old
                    data = data.replace(old, new)
            dst.writestr(name, data)


class _CallbackKey:
    """Stands for pytorch_lightning 1.x's ModelCheckpoint class, which SD v1 checkpoints use as a dict key."""


class _RunsShell:
    """Unpickling this runs a shell command (the attack a safe loader must refuse)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Tiny(torch.nn.Module):
    def __init__(self, with_loss: bool = False):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = torch.nn.Linear(3, 2)
        self.first_stage_model = torch.nn.Conv2d(2, 2, 1)
        if with_loss:
            self.loss = torch.nn.Linear(1, 1)


# ----------------------------------------------------------------------------------------------- reading files


def test_lightning_26_checkpoint_with_hyperparameters_loads(tmp_path):
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self, channels: int = 3, name: str = "tiny", lr: float = 1e-3, cfg=None):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(channels, 2)

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).square().mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    module = Module(cfg=OmegaConf.create({"target": "x.Y", "params": {"n": [1, 2]}}))
    trainer = pl.Trainer(
        max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        default_root_dir=tmp_path, enable_checkpointing=False,
    )
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3)), batch_size=4)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    checkpoint = load_checkpoint(tmp_path / "last.ckpt")
    assert checkpoint["global_step"] == 2
    assert checkpoint["hyper_parameters"]["name"] == "tiny"
    # OmegaConf hyper-parameters come back as plain containers (nothing from a file is ever interpolated)
    assert checkpoint["hyper_parameters"]["cfg"] == {"target": "x.Y", "params": {"n": [1, 2]}}
    assert type(checkpoint["hyper_parameters"]["cfg"]) is dict
    state_dict = load_state_dict_file(tmp_path / "last.ckpt")
    assert state_dict.keys() == module.state_dict().keys()
    assert all(torch.equal(state_dict[k], v) for k, v in module.state_dict().items())


def test_sd_v1_global_set_loads(tmp_path):
    """numpy.core.multiarray.scalar (pre-2.0 name), numpy dtypes, _codecs.encode and ModelCheckpoint as a key."""
    path = tmp_path / "sd-v1-like.ckpt"
    torch.save(
        {
            "state_dict": _tensors(),
            "global_step": 470000,
            "callbacks": {_CallbackKey: {"best_model_score": np.float64(0.125), "monitor": "val/loss_simple_ema"}},
            "epoch_loss": np.float32(1.5),
            "dtype_class": np.dtypes.Float64DType,
        },
        path,
    )
    _rewrite_globals(
        path,
        {
            b"numpy._core.multiarray\nscalar\n": b"numpy.core.multiarray\nscalar\n",
            f"{__name__}\n_CallbackKey\n".encode(): b"pytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\n",
        },
    )
    checkpoint = load_checkpoint(path)
    assert checkpoint["global_step"] == 470000
    ((key, state),) = checkpoint["callbacks"].items()
    assert key is ModelCheckpointStub and state["best_model_score"] == 0.125
    assert checkpoint["epoch_loss"] == np.float32(1.5) and checkpoint["dtype_class"] is np.dtypes.Float64DType
    loaded = load_state_dict_file(path)
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in _tensors().items())


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_calling_os_system_is_refused_and_nothing_runs(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": _tensors(), "payload": _RunsShell(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "system (can run code)" in message and "Nothing in the file was executed" in message
    assert "convert_checkpoint.py" not in message and "treat the file as hostile" in message
    assert "\n" not in message and not info.value.benign
    assert any(name.endswith(".system") for name in info.value.globals)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict_file(path)
    assert not marker.exists()


def test_missing_file_names_path_and_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt.*model\.params\.ckpt_path"):
        load_state_dict_file(tmp_path / "nope.ckpt", config_key="model.params.ckpt_path")


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_corrupt_or_truncated_file_is_a_clear_error(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    if suffix == ".safetensors":
        convert([str(_saved_ckpt(tmp_path)), str(good)])
    else:
        torch.save({"state_dict": _tensors()}, good)
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match=path.name):
            load_checkpoint(path)


def test_non_tensor_state_dict_entry_is_rejected(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1), "step": 3}}, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="'step' is a int"):
        load_state_dict_file(tmp_path / "odd.ckpt")


# ----------------------------------------------------------------------------------------------- converter


def _saved_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": _tensors(), "global_step": 1234, "epoch": 5, "optimizer_states": [{"m": 1}]}, path)
    return path


def test_converter_round_trip_is_exact(tmp_path):
    safetensors_path = tmp_path / "model.safetensors"
    convert([str(_saved_ckpt(tmp_path)), str(safetensors_path)])
    converted = load_checkpoint(safetensors_path)
    assert converted["metadata"]["global_step"] == "1234" and converted["metadata"]["epoch"] == "5"
    for name, path in (("safetensors", safetensors_path), ("back", tmp_path / "back.ckpt")):
        if name == "back":
            convert([str(safetensors_path), str(path)])
            back = load_checkpoint(path)
            assert back["global_step"] == 1234 and back["epoch"] == 5
        loaded = load_state_dict_file(path)
        assert loaded.keys() == _tensors().keys()
        assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in _tensors().items())


def test_converter_unsafe_flag_reads_a_refused_pickle(tmp_path):
    path = tmp_path / "pathy.ckpt"
    torch.save({"state_dict": _tensors(), "global_step": 3, "logdir": pathlib.PurePosixPath("/logs/x")}, path)
    with pytest.raises(UnsafeCheckpointError, match="PurePosixPath"):
        convert([str(path), str(tmp_path / "out.safetensors")])
    convert([str(path), str(tmp_path / "out.safetensors"), "--unsafe-trust-pickle"])
    converted = load_checkpoint(tmp_path / "out.safetensors")
    assert "logdir" not in converted["metadata"] and converted["metadata"]["global_step"] == "3"
    assert torch.equal(converted["state_dict"]["betas"], _tensors()["betas"])


# ----------------------------------------------------------------------------------------------- EMA


def test_use_ema_swaps_unet_weights_for_their_ema_copies(tmp_path, caplog):
    tensors = _tensors()
    ema = {ema_key(k): v + 1 for k, v in tensors.items() if k.startswith("model.diffusion_model.")}
    assert "model_ema.diffusion_modelinput_blocks00weight" in ema
    bookkeeping = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(7, dtype=torch.int)}
    torch.save({"state_dict": {**tensors, **ema, **bookkeeping}}, tmp_path / "ema.ckpt")

    with caplog.at_level(logging.INFO, logger="ldm.checkpoint"):
        swapped = load_state_dict_file(tmp_path / "ema.ckpt", use_ema=True)
    assert "swapped in EMA weights for 2 of 2" in caplog.text
    for key, value in tensors.items():
        expected = value + 1 if key.startswith("model.diffusion_model.") else value
        assert torch.equal(swapped[key], expected)
    assert all(torch.equal(swapped[k], v) for k, v in ema.items())  # kept for models that have an EMA
    assert torch.equal(load_state_dict_file(tmp_path / "ema.ckpt")["model.diffusion_model.out.2.bias"],
                       tensors["model.diffusion_model.out.2.bias"])


def test_use_ema_without_ema_weights_warns_and_keeps_weights(tmp_path, caplog):
    torch.save({"state_dict": _tensors()}, tmp_path / "plain.ckpt")
    with caplog.at_level(logging.WARNING, logger="ldm.checkpoint"):
        loaded = load_state_dict_file(tmp_path / "plain.ckpt", use_ema=True)
    assert "no EMA weights" in caplog.text
    assert torch.equal(loaded["betas"], _tensors()["betas"])


# ----------------------------------------------------------------------------------------------- applying


def test_tolerated_extras_are_dropped_and_strict_load_passes():
    source = _Tiny()
    state_dict = {
        **source.state_dict(),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(3, dtype=torch.int),
        "model_ema.diffusion_modelweight": torch.zeros(2, 3),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
        "loss.logvar": torch.zeros(()),
    }
    target = _Tiny()
    report = apply_state_dict(target, state_dict, strict=True)
    assert sorted(report.tolerated) == sorted(k for k in state_dict if k not in source.state_dict())
    assert report.missing == report.unexpected == report.ignored == []
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


def test_loss_keys_load_when_the_module_has_a_loss():
    source = _Tiny(with_loss=True)
    target = _Tiny(with_loss=True)
    report = apply_state_dict(target, source.state_dict(), strict=True)
    assert report.tolerated == []
    assert torch.equal(target.loss.weight, source.loss.weight)


def test_ignore_keys_drop_prefixes_and_are_not_strict_failures(caplog):
    source, target = _Tiny(), _Tiny()
    before = target.first_stage_model.weight.clone()
    with caplog.at_level(logging.INFO, logger="ldm.checkpoint"):
        report = apply_state_dict(target, source.state_dict(), ignore_keys=["first_stage_model."], strict=True,
                                  what="LatentDiffusion")
    assert report.ignored == ["first_stage_model.weight", "first_stage_model.bias"]
    assert report.missing == ["first_stage_model.weight", "first_stage_model.bias"]
    assert torch.equal(target.first_stage_model.weight, before)
    assert torch.equal(target.model.diffusion_model.weight, source.model.diffusion_model.weight)
    assert "LatentDiffusion: loaded 2 tensors; 2 missing (first_stage_model.weight" in caplog.text


def test_shape_mismatch_names_first_key_and_both_shapes():
    state_dict = _Tiny().state_dict()
    state_dict["model.diffusion_model.weight"] = torch.zeros(5, 3)
    state_dict["first_stage_model.weight"] = torch.zeros(9, 2, 1, 1)
    with pytest.raises(ValueError, match=r"'model\.diffusion_model\.weight' has shape \(5, 3\).*expects \(2, 3\)"):
        apply_state_dict(_Tiny(), state_dict)


def test_unexpected_and_missing_keys_report_or_raise_when_strict():
    state_dict = _Tiny().state_dict()
    del state_dict["first_stage_model.bias"]
    state_dict["cond_stage_model.embedding.weight"] = torch.zeros(11, 4)
    report = apply_state_dict(_Tiny(), state_dict)
    assert report.missing == ["first_stage_model.bias"]
    assert report.unexpected == ["cond_stage_model.embedding.weight"]
    with pytest.raises(ValueError, match=r"1 missing \(first_stage_model\.bias\), 1 unexpected"):
        apply_state_dict(_Tiny(), state_dict, strict=True)


def test_ema_buffers_load_into_a_module_that_has_an_ema():
    source = _Tiny()
    ema = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(3, dtype=torch.int),
           "model_ema.diffusion_modelweight": torch.full((2, 3), 0.5)}
    target = _Tiny()
    target.model_ema = torch.nn.Module()
    for name in ("decay", "num_updates", "diffusion_modelweight"):
        target.model_ema.register_buffer(name, torch.zeros_like(ema[f"model_ema.{name}"]))
    report = apply_state_dict(target, {**source.state_dict(), **ema}, strict=True)
    assert report.tolerated == []
    assert torch.equal(target.model_ema.diffusion_modelweight, ema["model_ema.diffusion_modelweight"])
    assert target.model_ema.num_updates.item() == 3
