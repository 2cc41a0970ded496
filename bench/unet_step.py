"""UNet step: the full Stable Diffusion v1 UNet, fp32, ours against diffusers' ``UNet2DConditionModel``.

Random weights (every layer non-zero) are converted key by key, the outputs are asserted equal within 1e-4,
then one guided step (batch 2, 77 context tokens) is timed as the median of interleaved repeats. Ours runs with
the inference blocks swapped in (``swap_fast_blocks``, as the sampling scripts do by default), in its default NCHW
layout, with ``UNetModel.to(memory_format=torch.channels_last)``, and with its conv weights packed once
(``ldm.modules.fast.packed_conv``).
"""

from __future__ import annotations

import logging

import torch

from bench.common import Row, matmul_step, median_times, peak_memory_mb, randomize_, sd_config
from bench.convert_diffusers import unet_diffusers_config, unet_to_diffusers
from ldm.modules.attention import SpatialTransformer
from ldm.modules.fast.blocks import swap_fast_blocks
from ldm.modules.fast.packed_conv import pack_convolutions
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4
PACKED = "channels-last, prepacked convs"


def build_pair(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our SD v1 UNet with random weights and diffusers' with the same weights."""
    from diffusers import UNet2DConditionModel

    ours = randomize_(instantiate_from_config(sd_config().unet_config), seed)
    theirs = UNet2DConditionModel(**unet_diffusers_config(ours))
    theirs.load_state_dict(unet_to_diffusers(ours), strict=True)
    return ours, theirs.eval()


def _set_layout(module: torch.nn.Module, channels_last: bool) -> None:
    module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _measure(ours: torch.nn.Module, theirs: torch.nn.Module, latent: int, label: str, repeats: int, seed: int) -> Row:
    """One session: ours as it is now against diffusers, interleaved; the equality check doubles as warm-up."""
    gen = torch.Generator().manual_seed(seed + latent)
    x = torch.randn(2, 4, latent, latent, generator=gen)
    t = torch.tensor([999, 999])
    context = torch.randn(2, 77, 768, generator=gen)
    x_ours = x.contiguous(memory_format=torch.channels_last) if label != "NCHW" else x
    step = {"ours": lambda: ours(x_ours, t, context), "theirs": lambda: theirs(x, t, context).sample}
    with torch.no_grad():
        diff = (step["ours"]() - step["theirs"]()).abs().max().item()
        if diff > TOLERANCE:
            raise RuntimeError(f"UNet outputs ({label}) differ from diffusers' by {diff:.2e} > {TOLERANCE}")
        matmul, matmul_flops = matmul_step()
        seconds = median_times({**step, "matmul": matmul}, repeats, warmup=0)
        mem = {name: peak_memory_mb(fn) for name, fn in step.items()}
    logger.info("UNet %dx%d, ours %s: %s", latent, latent, label, seconds)
    return Row(f"UNet step {latent}x{latent}, batch 2 (ours {label})", seconds["ours"], seconds["theirs"], mem["ours"],
               mem["theirs"], diff, matmul_gflops=matmul_flops / seconds["matmul"] / 1e9)


def run(latents: tuple[int, ...] = (64, 32), repeats: int = 3, seed: int = 0, prepack: bool = True) -> list[Row]:
    """Rows per variant (NCHW, channels-last, and with ``prepack`` the packed conv weights) and latent size."""
    ours, theirs = build_pair(seed)
    swap_fast_blocks(ours)
    rows = []
    for label, channels_last in (("NCHW", False), ("channels-last", True)):
        _set_layout(ours, channels_last)
        rows += [_measure(ours, theirs, latent, label, repeats, seed) for latent in latents]
    if prepack:
        pack_convolutions(ours, skip=(SpatialTransformer,))
        rows += [_measure(ours, theirs, latent, PACKED, repeats, seed) for latent in latents]
    return rows
