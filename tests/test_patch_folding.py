"""ldm.models.diffusion.patch_folding: blend weights in closed form, and patch-wise paths that must give back
what the whole-image computation gives when the computation is local (identity, nearest up-sampling, pooling)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from tests.fakes import EchoUNet, make_pixel_ldm, unet

SPLIT = {
    "ks": (8, 8),
    "stride": (4, 4),
    "vqf": 1,
    "patch_distributed_vq": True,
    "clip_min_weight": 0.01,
    "clip_max_weight": 0.5,
    "tie_braker": False,
    "clip_min_tie_weight": 0.01,
    "clip_max_tie_weight": 0.5,
}


class PoolUpFirstStage(nn.Module):
    """encode: f×f average pooling; decode: f× nearest up-sampling (both act patch by patch)."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor
        self.calls = 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.avg_pool2d(x, self.factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.interpolate(z, scale_factor=self.factor, mode="nearest")


class SumHalvesUNet(nn.Module):
    """Output = first half of the channels + second half (x + c for ``concat`` conditioning)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        self.seen_shape = tuple(x.shape)
        half = x.shape[1] // 2
        return x[:, :half] + x[:, half:]


def split_model(**params):
    """As a config would give it (an OmegaConf node); the model keeps a plain dict it can annotate."""
    return make_pixel_ldm(split_input_params=OmegaConf.create({**SPLIT, **params}))


def test_delta_border_is_the_distance_to_the_nearest_border():
    model = split_model()
    ys, xs = torch.meshgrid(torch.arange(5.0), torch.arange(7.0), indexing="ij")
    expected = torch.stack([ys / 4, xs / 6, 1 - ys / 4, 1 - xs / 6]).amin(dim=0)
    torch.testing.assert_close(model.delta_border(5, 7), expected)
    assert model.meshgrid(2, 3).tolist() == [[[0, 0], [0, 1], [0, 2]], [[1, 0], [1, 1], [1, 2]]]


def test_weighting_is_the_clipped_distance_times_the_patch_grid_tie_breaker():
    model = split_model(tie_braker=True, clip_min_tie_weight=0.2, clip_max_tie_weight=0.4)
    weighting = model.get_weighting(4, 4, 3, 3, "cpu")
    assert weighting.shape == (1, 16, 9)
    in_patch = model.delta_border(4, 4).clip(0.01, 0.5).view(16, 1)
    in_grid = model.delta_border(3, 3).clip(0.2, 0.4).view(1, 9)
    torch.testing.assert_close(weighting[0], in_patch * in_grid)


@pytest.mark.parametrize("size", [(16, 16), (12, 20)])
def test_blending_overlapping_patches_gives_back_the_input(size):
    """fold(w · patches) / fold(w) = x: the identity first stage decodes/encodes patch-wise to the same tensor."""
    model = split_model(tie_braker=True)
    z = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.decode_first_stage(z), z)
    torch.testing.assert_close(model.encode_first_stage(z), z)
    assert tuple(model.split_input_params["original_image_size"]) == size


def test_patch_wise_decoding_and_encoding_rescale_by_vqf():
    model = split_model(vqf=2, ks=(4, 4), stride=(2, 2))
    model.first_stage_model = PoolUpFirstStage(2)
    z = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.decode_first_stage(z), F.interpolate(z, scale_factor=2, mode="nearest"))
    assert model.first_stage_model.calls == 9  # 3 × 3 patches of 4 × 4 at stride 2
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    model.split_input_params.update(ks=(8, 8), stride=(4, 4))
    torch.testing.assert_close(model.encode_first_stage(x), F.avg_pool2d(x, 2))
    assert model.first_stage_model.calls == 18


def test_patch_wise_denoiser_with_a_cut_spatial_conditioning():
    model = split_model(patch_distributed_vq=False)
    x, c, t = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    torch.testing.assert_close(model.apply_model(x, t, None), x)
    model.model.diffusion_model = SumHalvesUNet()
    model.model.conditioning_key, model.cond_stage_key = "concat", "segmentation"
    torch.testing.assert_close(model.apply_model(x, t, c), x + c)
    assert model.model.diffusion_model.seen_shape == (2, 6, 8, 8)  # a patch of x with its patch of c
    with pytest.raises(NotImplementedError, match="return_ids"):
        model.apply_model(x, t, c, return_ids=True)


def test_without_split_input_params_nothing_is_cut():
    model = make_pixel_ldm(unet_config=unet(EchoUNet))
    assert not hasattr(model, "split_input_params")
    z = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(model.decode_first_stage(z), z)
