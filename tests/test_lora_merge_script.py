"""scripts/merge_lora.py: checkpoint + LoRA files → a checkpoint with the same keys and the merged weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.checkpoint import load_checkpoint, save_checkpoint
from ldm.lora import merge_lora, read_lora
from ldm.lora.adapters import base_state_dict
from tests.lora_fixtures import LORA, PLAIN, build, denoiser_output, randomize_adapters, tiny_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import merge_lora as merge_script  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A base checkpoint with EMA weights, its config, and two LoRA files trained (randomised) on it."""
    folder = tmp_path_factory.mktemp("merge")
    adapted = build(tiny_config(LORA, lora_config={"rank": 2, "alpha": 1.0, "text_encoder": True}))
    base = build(tiny_config(PLAIN, use_ema=True))
    base.load_state_dict(base_state_dict(adapted), strict=False)
    save_checkpoint(folder / "base.ckpt", base.state_dict(), global_step=7)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml({"model": tiny_config(PLAIN, use_ema=True)}))
    for seed in (2, 3):
        randomize_adapters(adapted, seed)
        adapted.export_lora(folder / f"lora{seed}.safetensors")
    return {"folder": folder, "base": base}


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_merged_checkpoint_equals_merging_in_memory(files: dict, suffix: str) -> None:
    folder = files["folder"]
    out = folder / f"merged{suffix}"
    merge_script.main(["--config", str(folder / "config.yaml"), "--ckpt", str(folder / "base.ckpt"),
                       "--lora", f"{folder / 'lora2.safetensors'}:0.7", "--lora", str(folder / "lora3.safetensors"),
                       "--out", str(out)])
    merged = load_checkpoint(out)
    expected = build(tiny_config(PLAIN, use_ema=True), offsets=False)
    expected.load_state_dict(files["base"].state_dict())
    merge_lora(expected, read_lora(folder / "lora2.safetensors"), 0.7)
    merge_lora(expected, read_lora(folder / "lora3.safetensors"), 1.0)
    want = expected.state_dict()
    assert sorted(merged["state_dict"]) == sorted(load_checkpoint(folder / "base.ckpt")["state_dict"])
    for key, value in merged["state_dict"].items():
        torch.testing.assert_close(value, want[key], atol=0, rtol=0, msg=key)
    sampled = build(tiny_config(PLAIN, use_ema=True), offsets=False)
    sampled.load_state_dict(merged["state_dict"])
    with sampled.ema_scope(), expected.ema_scope():
        torch.testing.assert_close(denoiser_output(sampled), denoiser_output(expected), atol=0, rtol=0)


def test_merge_refuses_to_overwrite_its_input(files: dict, capsys: pytest.CaptureFixture) -> None:
    folder = files["folder"]
    with pytest.raises(SystemExit):
        merge_script.main(["--config", str(folder / "config.yaml"), "--ckpt", str(folder / "base.ckpt"),
                           "--lora", str(folder / "lora2.safetensors"), "--out", str(folder / "base.ckpt")])
    assert "is the input checkpoint" in capsys.readouterr().err
