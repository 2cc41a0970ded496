"""The fine-tuning configs (configs/stable-diffusion/v1-finetune.yaml, v2-finetune-v.yaml): their model is the
released model of the matching inference config plus the training settings, and v1-finetune trains through main.py
(at toy size: its data, EMA, warm-up, fixed-prompt images and checkpoints). Building full size on meta and the
config screen are covered for every shipped config by tests/test_model_zoo_configs.py and tests/test_config_trust.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

import main
from ldm.util import instantiate_from_config
from tests.test_prompt_images import TINY_TXT2IMG

ROOT = Path(__file__).resolve().parents[1]
SD = ROOT / "configs" / "stable-diffusion"
PAIRS = [("v1-finetune.yaml", "v1-inference.yaml"), ("v2-finetune-v.yaml", "v2-inference-v.yaml")]
#: What fine-tuning adds or changes in ``model.params`` (and ``base_learning_rate`` beside it).
TRAINING_KEYS = {"ckpt_path", "use_ema", "reset_ema", "ucg_training", "scheduler_config", "first_stage_key",
                 "monitor", "image_size"}


@pytest.mark.parametrize(("finetune", "inference"), PAIRS)
def test_the_model_is_the_released_one_plus_training_settings(finetune: str, inference: str) -> None:
    tuned, released = OmegaConf.load(SD / finetune).model, OmegaConf.load(SD / inference).model
    assert OmegaConf.is_missing(tuned.params, "ckpt_path")
    assert tuned.params.use_ema is True and tuned.params.ucg_training == {"txt": {"p": 0.1, "val": ""}}
    assert tuned.params.scheduler_config.target == "ldm.lr_scheduler.LambdaLinearScheduler"
    unet = tuned.params.unet_config.params
    assert unet.use_checkpoint is True and unet.checkpoint_transformers is True
    assert tuned.params.get("parameterization", "eps") == released.params.get("parameterization", "eps")
    del unet.checkpoint_transformers  # the default of UNetModel, spelled out
    for key in TRAINING_KEYS:
        tuned.params.pop(key, None)
        released.params.pop(key, None)
    assert tuned.params == released.params and tuned.target == released.target


@pytest.mark.parametrize("finetune", [pair[0] for pair in PAIRS])
def test_the_training_sections_are_set(finetune: str) -> None:
    config = OmegaConf.load(SD / finetune)
    assert config.data.params.train.target == "ldm.data.image_folder.ImageFolderDataset"
    assert OmegaConf.is_missing(config.data.params.train.params, "root")
    assert config.data.params.train.params.random_crop is True
    assert config.lightning.trainer.precision == "bf16-mixed"
    fixed = config.lightning.callbacks.fixed_prompt_images
    assert fixed.target == "ldm.callbacks.prompt_images.FixedPromptImageLogger" and len(fixed.params.prompts) >= 2
    assert config.lightning.modelcheckpoint.params.every_n_train_steps > 0
    assert "ldm.data.laion.WebDataModuleFromConfig" in (SD / finetune).read_text()


def tiny_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A captioned image folder, a toy 'released' checkpoint, and a config that shrinks v1-finetune's model to
    the toy size (BERT text encoder in place of CLIP, as no CLIP weights are at hand)."""
    images = tmp_path / "images"
    images.mkdir()
    for index, colour in enumerate(("red", "blue", "green", "white")):
        Image.new("RGB", (20, 16), colour).save(images / f"{index}.png")
        (images / f"{index}.txt").write_text(f"a {colour} picture\n")
    params = TINY_TXT2IMG["params"]
    shrink = {"model": {"params": {
        "image_size": 8, "timesteps": 100,
        "unet_config": {"params": {"model_channels": 32, "attention_resolutions": [2], "num_res_blocks": 1,
                                   "channel_mult": [1, 2], "num_heads": 2, "context_dim": 32}},
        "first_stage_config": {"params": {"ddconfig": params["first_stage_config"]["params"]["ddconfig"]}},
        "cond_stage_config": params["cond_stage_config"]}},
        "data": {"params": {"batch_size": 2, "num_workers": 0, "train": {"params": {"size": 16}}}},
        "lightning": {
            "callbacks": {"fixed_prompt_images": {"params": {"prompts": ["a red picture", "a blue picture"],
                                                             "every_n_steps": 2, "ddim_steps": 2}},
                          "image_logger": {"params": {"disabled": True}}},
            "modelcheckpoint": {"params": {"every_n_train_steps": 1}},
            "trainer": {"accelerator": "cpu", "precision": 32, "accumulate_grad_batches": 1, "max_steps": 2,
                        "benchmark": False, "enable_progress_bar": False, "enable_model_summary": False}}}
    shrink_path = tmp_path / "toy.yaml"
    shrink_path.write_text(yaml.safe_dump(shrink))
    merged = OmegaConf.merge(OmegaConf.load(SD / "v1-finetune.yaml"), OmegaConf.load(shrink_path))
    merged.model.params.ckpt_path = None
    merged.model.params.reset_ema = False
    torch.manual_seed(0)
    released = instantiate_from_config(merged.model)
    checkpoint = tmp_path / "released.ckpt"
    torch.save({"state_dict": {k: v for k, v in released.state_dict().items() if not k.startswith("model_ema.")}},
               checkpoint)
    return images, checkpoint, shrink_path


def test_v1_finetune_trains_through_main(tmp_path: Path) -> None:
    images, checkpoint, shrink = tiny_setup(tmp_path)
    logs = tmp_path / "logs"
    argv = ["-b", str(SD / "v1-finetune.yaml"), str(shrink), "-t", "-l", str(logs),
            f"model.params.ckpt_path={checkpoint}", f"data.params.train.params.root={images}"]
    assert main.main(argv) == 0
    (run,) = logs.iterdir()
    grids = sorted((run / "images" / "fixed_prompts").glob("samples_gs-*.png"))
    assert [g.name[:17] for g in grids] == ["samples_gs-000000", "samples_gs-000002"]
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    state = saved["state_dict"]
    # ModelCheckpoint writes at the end of batch 2 before the module's own end-of-batch hook updates the EMA
    assert any(k.startswith("model_ema.") for k in state) and state["model_ema.num_updates"] == 1
    released = torch.load(checkpoint, weights_only=True)["state_dict"]
    key = "model.diffusion_model.out.2.weight"
    assert not torch.equal(state[key], released[key]), "the UNet trained"
    # warm-up over 500 steps from f_start=1e-6: after 2 steps lr = 1e-5 * (1e-6 + (1 - 1e-6) * 2 / 500)
    (lr,) = [group["lr"] for group in saved["optimizer_states"][0]["param_groups"]]
    assert lr == pytest.approx(2 * 3.125e-7 * (1e-6 + (1 - 1e-6) * 2 / 500), rel=1e-6)
