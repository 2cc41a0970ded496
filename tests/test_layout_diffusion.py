"""ldm.models.diffusion.layout_diffusion: Layout2ImgDiffusion's key check and its ``bbox_image`` log."""

from __future__ import annotations

import types

import pytest
import torch

from ldm.legacy.layout_diffusion import Layout2ImgDiffusion
from ldm.models.diffusion import ddpm

PARAMS = {
    "first_stage_config": {"target": "ldm.models.autoencoder.IdentityFirstStage"},
    "cond_stage_config": "__is_unconditional__",
    "unet_config": {"target": "tests.fakes.EchoUNet"},
    "use_ema": False,
    "timesteps": 4,
    "image_size": 4,
    "log_every_t": 2,
}


class FakeLayoutDataset:
    """The two label look-ups and a conditional builder that draws each box as its category number."""

    def __init__(self):
        self.conditional_builders = {"coordinates_bbox": self}
        self.calls = []

    def get_category_id(self, number: int) -> str:
        return f"id{number}"

    def get_textual_label(self, category_id: str) -> str:
        return f"label-{category_id}"

    def plot(self, tokens: torch.Tensor, label_fn, size: tuple[int, int]) -> torch.Tensor:
        self.calls.append([label_fn(int(n)) for n in tokens])
        return torch.full((3, size[1], size[0]), float(tokens.sum()))


def test_the_original_path_resolves_and_other_keys_are_refused():
    assert ddpm.Layout2ImgDiffusion is Layout2ImgDiffusion
    with pytest.raises(AssertionError, match="coordinates_bbox"):
        Layout2ImgDiffusion("caption", **PARAMS)


def test_log_images_adds_the_drawn_layouts():
    model = Layout2ImgDiffusion("coordinates_bbox", **PARAMS).eval()
    dataset = FakeLayoutDataset()
    model._trainer = types.SimpleNamespace(datamodule=types.SimpleNamespace(datasets={"validation": dataset}))
    batch = {"image": torch.rand(3, 4, 4, 3) * 2 - 1, "coordinates_bbox": torch.tensor([[1, 2], [3, 4], [5, 6]])}
    logs = model.log_images(batch, N=2, sample=False, plot_progressive_rows=False)
    assert {"inputs", "reconstruction", "diffusion_row", "bbox_image"} == set(logs)
    assert logs["bbox_image"].shape == (2, 3, 256, 256)
    assert logs["bbox_image"][:, 0, 0, 0].tolist() == [3.0, 7.0]
    assert dataset.calls == [["label-id1", "label-id2"], ["label-id3", "label-id4"]]
