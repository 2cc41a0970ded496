"""Every SD 2.x model class trains through ``main.py``: inpainting, depth-to-image, the x4 upscaler and unCLIP.

Each run is the real command (``main.main``: config merge, Lightning Trainer, checkpointing) on the embedded
shapes data with the batch keys the released configs' data pipelines give these models (``mask`` /
``masked_image``, ``midas_in`` from :class:`ldm.data.util.AddMiDaS`, a 4x-smaller ``lr``), on the tiny models of
``tests/sd2_fakes.py``. What is checked: the run finishes, the checkpoint holds the trained step, the UNet moved
from its initialisation and the frozen stages did not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import Dataset

import main
from ldm.data.shapes import ShapesDataset
from ldm.data.util import AddMiDaS
from ldm.inference import seed_everything
from ldm.models.diffusion.finetune_diffusion import binarize_mask, masked_image
from ldm.util import instantiate_from_config
from tests import sd2_fakes

TARGETS = {
    "inpaint": ("ldm.models.diffusion.ddpm.LatentInpaintDiffusion", sd2_fakes.inpaint_params),
    "depth": ("ldm.models.diffusion.ddpm.LatentDepth2ImageDiffusion", sd2_fakes.depth_params),
    "upscale": ("ldm.models.diffusion.ddpm.LatentUpscaleDiffusion", sd2_fakes.upscale_params),
    "unclip": ("ldm.models.diffusion.ddpm.ImageEmbeddingConditionedLatentDiffusion", sd2_fakes.unclip_params),
}
STEPS = 3


class SD2Shapes(Dataset):
    """Captioned 16 px shapes as the SD 2.x training batches: ``jpg`` ``(16, 16, 3)`` in [-1, 1], ``txt``, and for
    ``kind`` "inpaint" a rectangle ``mask`` ``(16, 16, 1)`` with its ``masked_image``, "depth" the MiDaS input,
    "upscale" the 4x4-pooled ``lr`` ``(4, 4, 3)`` (the low-resolution input of the 8 px latents' model is 8 px:
    pooled by 2 here, as the tiny first stage downsamples by 2)."""

    def __init__(self, kind: str, length: int = 16, split: str = "train") -> None:
        self.kind = kind
        self.shapes = ShapesDataset(size=16, length=length, split=split)
        self.add_midas = AddMiDaS("dpt_hybrid")

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict:
        item = self.shapes[index]
        sample = {"jpg": torch.as_tensor(np.asarray(item["image"]), dtype=torch.float32), "txt": item["caption"]}
        if self.kind == "inpaint":
            mask = torch.zeros(16, 16, 1)
            top, left = 2 + index % 6, 3 + (index * 5) % 6
            mask[top : top + 7, left : left + 6] = 1.0
            sample["mask"] = binarize_mask(mask)
            sample["masked_image"] = masked_image(sample["jpg"], sample["mask"])
        elif self.kind == "depth":
            sample = self.add_midas(sample)
        elif self.kind == "upscale":
            sample["lr"] = F.avg_pool2d(sample["jpg"].permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)
        return sample


def write_config(kind: str, folder: Path) -> Path:
    target, params = TARGETS[kind]
    dataset = {"target": "tests.test_sd2_training.SD2Shapes", "params": {"kind": kind}}
    config = {
        "model": {"base_learning_rate": 1e-4, "target": target, "params": params(monitor=None)},
        "data": {"target": "main.DataModuleFromConfig",
                 "params": {"batch_size": 4, "num_workers": 0, "train": dataset,
                            "validation": {**dataset, "params": {"kind": kind, "length": 4, "split": "validation"}}}},
        "lightning": {
            "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": STEPS, "val_check_interval": STEPS,
                        "limit_val_batches": 1, "num_sanity_val_steps": 0, "log_every_n_steps": 1},
            "callbacks": {"image_logger": {"target": "main.ImageLogger",
                                           "params": {"batch_frequency": 1000, "max_images": 2}}},
        },
    }
    path = folder / f"sd2_{kind}.yaml"
    OmegaConf.save(OmegaConf.create(config), path)
    return path


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_sd2_model_trains_through_main(kind, tmp_path):
    config = write_config(kind, tmp_path)
    logs = tmp_path / "logs"
    assert main.main(["--base", str(config), "-t", "-s", "0", "-l", str(logs), "--enable_progress_bar", "false"]) == 0
    (run,) = logs.iterdir()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == STEPS
    trained = checkpoint["state_dict"]

    # main.py seeds with ``-s 0`` before it builds the model: the same seed rebuilds the run's starting weights
    # (the frozen first stage must still equal them, which also shows the rebuild matches).
    seed_everything(0)
    target, params = TARGETS[kind]
    fresh = instantiate_from_config({"target": target, "params": params(monitor=None)}).state_dict()
    frozen = [k for k in trained if k.startswith("first_stage_model.")]
    assert frozen and all(torch.equal(trained[k], fresh[k]) for k in frozen)
    moved = [k for k in trained if k.startswith("model.diffusion_model.") and not torch.equal(trained[k], fresh[k])]
    assert moved, "the UNet did not train"
