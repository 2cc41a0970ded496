"""bench/flops.py: the UNet step FLOPs with the attention inside SDPA, and what the fused upsampling convs save."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from bench.flops import fused_upsample_savings, unet_step_flops
from ldm.modules.diffusionmodules.upsample_conv import phase_weights

TINY_UNET = OmegaConf.create({
    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "params": dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2],
                   num_res_blocks=1, channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True,
                   context_dim=16),
})


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_attention_flops_are_the_two_products_of_each_sdpa_call() -> None:
    """Every SpatialTransformer sits at 4x4 (the second level): self-attention over 16 tokens and cross-attention
    over 3, 2 heads of 32 channels, batch 2: ``4·B·H·L·S·E`` each."""
    total, attention = unet_step_flops(TINY_UNET, latent=8, batch=2, context_tokens=3)
    transformers = 4  # input block 2, the middle block, output blocks 0 and 1
    assert attention == transformers * 4 * 2 * 2 * 16 * (16 + 3) * 32
    assert total > attention


def test_fused_upsample_savings_match_the_counted_convolutions() -> None:
    """The tiny UNet has one upsampling conv, 64 -> 64 channels on a 4x4 input: the closed form equals the flop
    counter's direct conv minus its one 2x2 conv to four phase outputs."""
    saved = fused_upsample_savings(TINY_UNET, latent=8, batch=2, context_tokens=3)
    assert saved == 2 * 2 * 64 * 64 * (9 * 4 * 16 - 16 * 25)
    with torch.device("meta"):
        x, weight = torch.empty(2, 64, 4, 4), torch.empty(64, 64, 3, 3)
        direct = _flops(lambda: F.conv2d(F.interpolate(x, scale_factor=2.0), weight, padding=1))
        fused = _flops(lambda: F.conv2d(x, phase_weights(weight), padding=1))
    assert saved == direct - fused
