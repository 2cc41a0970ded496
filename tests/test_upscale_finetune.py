"""``LatentUpscaleFinetuneDiffusion`` (SD 2.x): a finetune conditioned on a low-resolution image, optionally
space-to-depth reshuffled and noise-augmented (the noise level then goes in as ``c_adm``)."""

from __future__ import annotations

import pytest
import torch

from ldm.models.diffusion import ddpm
from ldm.util import SettingError
from tests import sd2_fakes

B = 2
LOW_SCALE = {
    "target": "ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation",
    "params": {"noise_schedule_config": {"linear_start": 0.0001, "linear_end": 0.02}, "max_noise_level": 350},
}


def images(seed: int, size: int) -> torch.Tensor:
    return torch.rand(B, size, size, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_reshuffled_low_res_image_is_space_to_depth():
    """p = 2: channel (2·p1 + p2)·3 + c at (h, w) holds pixel (p1·8 + h, p2·8 + w) of channel c."""
    model = ddpm.LatentUpscaleFinetuneDiffusion(
        reshuffle_patch_size=2, **sd2_fakes.common(conditioning_key="hybrid", finetune_keys=None,
                                                   unet_config=sd2_fakes.unet(4 + 12)),
    )
    lr = images(1, 16)
    _, cond = model.get_input({"jpg": images(0, 16), "txt": ["a", "b"], "lr": lr}, "jpg")
    (c_cat,) = cond["c_concat"]
    assert c_cat.shape == (B, 12, 8, 8) and set(cond) == {"c_concat", "c_crossattn"}
    for p1, p2, c in [(0, 0, 0), (1, 0, 2), (0, 1, 1), (1, 1, 0)]:
        torch.testing.assert_close(c_cat[:, (2 * p1 + p2) * 3 + c], lr[:, p1 * 8 : p1 * 8 + 8, p2 * 8 : p2 * 8 + 8, c])


def test_noise_augmented_low_res_image_and_its_level_condition_the_unet():
    model = ddpm.LatentUpscaleFinetuneDiffusion(
        low_scale_config=LOW_SCALE, low_scale_key="lr",
        **sd2_fakes.common(conditioning_key="hybrid-adm", finetune_keys=None, parameterization="v",
                           unet_config=sd2_fakes.unet(7, num_classes=1000)),
    )
    batch = {"jpg": images(0, 16), "txt": ["a", "b"], "lr": images(1, 8)}
    seen = []
    augment = model.low_scale_model.forward
    model.low_scale_model.forward = lambda x, *args: seen.append((x, augment(x, *args))) or seen[-1][1]
    _, cond = model.get_input(batch, "jpg")
    ((given, (noised, levels)),) = seen
    torch.testing.assert_close(given, batch["lr"].permute(0, 3, 1, 2))
    assert cond["c_concat"][0] is noised and cond["c_adm"] is levels and levels.shape == (B,)
    assert not torch.allclose(noised, given)
    model.train()
    loss, _ = model.shared_step(batch)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for p in model.low_scale_model.parameters())
    assert "lr" in model.log_images(batch, N=2, sample=False, plot_diffusion_rows=False)


def test_settings_errors_name_the_fix():
    params = sd2_fakes.common(conditioning_key="hybrid", finetune_keys=None, unet_config=sd2_fakes.unet(7))
    with pytest.raises(SettingError, match="one concat key"):
        ddpm.LatentUpscaleFinetuneDiffusion(concat_keys=("lr", "mask"), **params)
    with pytest.raises(SettingError, match="low_scale_key"):
        ddpm.LatentUpscaleFinetuneDiffusion(low_scale_config=LOW_SCALE, **params)
