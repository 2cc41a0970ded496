"""``--lora FILE[:WEIGHT]`` in scripts/txt2img.py and img2img.py, end to end on a tiny text-to-image model: the
images equal those of the checkpoint merged by scripts/merge_lora.py."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.util import instantiate_from_config
from scripts.img2img import main as img2img
from scripts.txt2img import main as txt2img
from tests.lora_fixtures import randomize_adapters
from tests.test_scripts import FAST, SIZE, TEXT_ENCODER, _config, _save_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import merge_lora as merge_script  # noqa: E402


@pytest.fixture(scope="module")
def model_and_lora(tmp_path_factory) -> Iterator[tuple[Path, Path, Path]]:
    """``(config, base checkpoint, LoRA file)``: the LoRA trained (randomised) on that checkpoint. Built on one
    thread (the same sums whatever the machine); the caller's thread count is restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("lora")
    config, ckpt = _save_model(folder / "run", _config(TEXT_ENCODER, "caption"), seed=0)
    lora_config = copy.deepcopy(OmegaConf.to_container(OmegaConf.load(config)))["model"]
    lora_config["target"] = "ldm.models.diffusion.lora_diffusion.LoraLatentDiffusion"
    lora_config["params"].update(ckpt_path=str(ckpt), lora_config={"rank": 4, "alpha": 2.0})
    adapted = instantiate_from_config(OmegaConf.create(lora_config))
    randomize_adapters(adapted)
    adapted.export_lora(folder / "style.safetensors")
    yield config, ckpt, folder / "style.safetensors"
    torch.set_num_threads(threads)


def _images(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted((folder / "samples").glob("*.png"))]


def test_txt2img_lora_equals_the_merged_checkpoint(model_and_lora, tmp_path) -> None:
    config, ckpt, lora = model_and_lora
    common = ["--config", str(config), *SIZE, *FAST, "--prompt", "a red cube", "--seed", "4", "--skip_grid"]
    txt2img([*common, "--ckpt", str(ckpt), "--outdir", str(tmp_path / "flag"), "--lora", f"{lora}:0.8"])
    merged = tmp_path / "merged.safetensors"
    merge_script.main(["--config", str(config), "--ckpt", str(ckpt), "--lora", f"{lora}:0.8", "--out", str(merged)])
    txt2img([*common, "--ckpt", str(merged), "--outdir", str(tmp_path / "merged")])
    txt2img([*common, "--ckpt", str(ckpt), "--outdir", str(tmp_path / "base")])
    flag, merged_images, base = (_images(tmp_path / name) for name in ("flag", "merged", "base"))
    assert len(flag) == 2 and all(np.array_equal(a, b) for a, b in zip(flag, merged_images, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(flag, base, strict=True))


def test_img2img_takes_the_flag(model_and_lora, tmp_path) -> None:
    config, ckpt, lora = model_and_lora
    init = tmp_path / "init.png"
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(init)
    common = ["--config", str(config), "--ckpt", str(ckpt), "--init-img", str(init), "--prompt", "a red cube",
              "--ddim_steps", "5", "--n_samples", "1", "--n_iter", "1", "--f", "4", "--seed", "2", "--skip_grid"]
    img2img([*common, "--outdir", str(tmp_path / "with"), "--lora", str(lora)])
    img2img([*common, "--outdir", str(tmp_path / "without")])
    assert not np.array_equal(_images(tmp_path / "with")[0], _images(tmp_path / "without")[0])


def test_missing_lora_file_names_the_flag(model_and_lora, tmp_path) -> None:
    config, ckpt, _ = model_and_lora
    with pytest.raises(FileNotFoundError, match="--lora"):
        txt2img(["--config", str(config), "--ckpt", str(ckpt), *SIZE, "--outdir", str(tmp_path),
                 "--lora", str(tmp_path / "nope.safetensors:0.5")])
