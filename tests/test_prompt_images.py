"""FixedPromptImageLogger (ldm/callbacks/prompt_images.py): the same prompts from the same starting noise at every log
point; nothing sampled off rank 0; the training RNG untouched; one log per optimizer step under accumulation."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.plugins.precision import Precision

from ldm.callbacks.prompt_images import SPLIT, FixedPromptImageLogger
from ldm.util import ConfigError, instantiate_from_config

#: A text-to-image LatentDiffusion small enough to sample in a fraction of a second (random weights, 16 px images).
TINY_TXT2IMG = {
    "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
    "params": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 100, "first_stage_key": "image",
        "cond_stage_key": "txt", "image_size": 8, "channels": 4, "cond_stage_trainable": False,
        "conditioning_key": "crossattn", "monitor": None, "scale_factor": 0.18215, "use_ema": True,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
            "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "attention_resolutions": [2],
            "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 16, "use_spatial_transformer": True,
            "transformer_depth": 1, "context_dim": 32, "use_checkpoint": True, "legacy": False}},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": 4, "lossconfig": {"target": "torch.nn.Identity"}, "ddconfig": {
                "double_z": True, "z_channels": 4, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.BERTEmbedder", "params": {
            "n_embed": 32, "n_layer": 1, "tokenizer": "clip", "vocab_size": 49408, "max_seq_len": 8}},
    },
}
PROMPTS = ["a red circle", "a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return instantiate_from_config(OmegaConf.create(TINY_TXT2IMG)).train()


def fake_trainer(tmp_path: Path, step: int = 0, rank_zero: bool = True) -> types.SimpleNamespace:
    """The attributes of a Trainer the callback reads (no logger with images: the PNG files are the record)."""
    return types.SimpleNamespace(
        global_step=step, current_epoch=0, is_global_zero=rank_zero,
        logger=types.SimpleNamespace(save_dir=str(tmp_path)),
        default_root_dir=str(tmp_path), strategy=types.SimpleNamespace(model=None), precision_plugin=Precision(),
    )


def logger(**kwargs) -> FixedPromptImageLogger:
    return FixedPromptImageLogger(**{"prompts": PROMPTS, "every_n_steps": 2, "scale": 3.0, "ddim_steps": 2,
                                     "seed": 7, **kwargs})


def grids(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "images" / SPLIT).glob("samples_gs-*.png"))


def test_the_same_weights_give_the_same_grid_at_every_log_point(model, tmp_path: Path) -> None:
    callback = logger()
    callback.on_train_batch_start(fake_trainer(tmp_path, 0), model, None, 0)
    callback.on_train_batch_end(fake_trainer(tmp_path, 2), model, None, None, 3)
    first, second = grids(tmp_path)
    assert first.name == "samples_gs-000000_e-000000_b-000000.png"
    assert second.name == "samples_gs-000002_e-000000_b-000003.png"
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    # 3 prompts x 16 px in a row of up to 4 cells with 2 px padding
    assert Image.open(first).size == (3 * 18 + 2, 18 + 2)
    assert (tmp_path / "images" / SPLIT / "prompts.txt").read_text().splitlines() == PROMPTS
    assert model.training, "the model is back in training mode"


def test_the_grid_shows_the_ema_weights(model, tmp_path: Path) -> None:
    """Only the EMA copy changes between two log points (the trained weights stay): the grids differ."""
    callback = logger(log_at_start=False)
    callback.on_train_batch_end(fake_trainer(tmp_path, 2), model, None, None, 0)
    saved = {name: b.clone() for name, b in model.model_ema.named_buffers()}
    with torch.no_grad():  # the UNet's zero-initialised output layer becomes non-zero too
        for buffer in model.model_ema.buffers():
            if buffer.ndim > 0:
                buffer.add_(0.05)
    callback.on_train_batch_end(fake_trainer(tmp_path, 4), model, None, None, 0)
    with torch.no_grad():
        for name, buffer in model.model_ema.named_buffers():
            buffer.copy_(saved[name])
    first, second = (np.asarray(Image.open(p), dtype=np.int16) for p in grids(tmp_path))
    assert np.abs(first - second).max() > 10


def test_samples_do_not_depend_on_the_batch_size_or_the_training_rng(model) -> None:
    torch.manual_seed(123)
    one_at_a_time = logger(batch_size=1).sample(model)
    all_at_once = logger(batch_size=4).sample(model)
    torch.testing.assert_close(one_at_a_time, all_at_once, atol=1e-5, rtol=1e-5)
    assert one_at_a_time.min() >= -1 and one_at_a_time.max() <= 1


def test_the_training_rng_is_left_as_it_was(model, tmp_path: Path) -> None:
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    logger().on_train_batch_end(fake_trainer(tmp_path, 2), model, None, None, 0)
    assert torch.equal(torch.rand(4), expected)


def test_one_log_per_optimizer_step_and_only_at_multiples(model, tmp_path: Path) -> None:
    callback = logger(log_at_start=False)
    for step in (0, 1, 2, 2, 2, 3):  # accumulate_grad_batches=3: step 2 ends three batches
        callback.on_train_batch_start(fake_trainer(tmp_path, step), model, None, 0)
        callback.on_train_batch_end(fake_trainer(tmp_path, step), model, None, None, 0)
    assert [p.name[:16] for p in grids(tmp_path)] == ["samples_gs-000002"[:16]]


def test_other_ranks_neither_sample_nor_write(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    callback = logger()
    monkeypatch.setattr(callback, "sample", lambda _: pytest.fail("rank 1 sampled under DDP"))
    callback.on_train_batch_end(fake_trainer(tmp_path, 2, rank_zero=False), model, None, None, 0)
    assert not (tmp_path / "images").exists()


def test_pixel_size_sets_the_latent_shape(model) -> None:
    assert logger().latent_shape(model) == (4, 8, 8)
    assert logger(height=32, width=24).latent_shape(model) == (4, 16, 12)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prompts": "a cat"}, "'prompts' must be a non-empty list"),
    ({"prompts": []}, "'prompts' must be a non-empty list"),
    ({"every_n_steps": 0}, "'every_n_steps' must be a whole number >= 1"),
    ({"ddim_steps": 0}, "'ddim_steps' must be a whole number >= 1"),
])
def test_bad_settings_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        logger(**kwargs)
