"""VAE decode: the SD v1 kl-f8 decoder on a ``(1, 4, 64, 64)`` latent (a 512x512 image), ours against diffusers'
``AutoencoderKL.decode`` with the same random weights (asserted equal within 1e-4 first); then ours alone on a
1024x1024 image, untiled and with VAE tiling (``ldm.models.vae_tiling``). Ours decodes with the autoencoder's
inference blocks swapped in (``ldm.modules.fast.autoencoder``), as the sampling scripts do by default."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from bench.common import Row, median_times, peak_memory_mb, randomize_, sd_config
from bench.convert_diffusers import vae_diffusers_config, vae_to_diffusers
from ldm.models.vae_tiling import set_vae_tiling
from ldm.modules.fast.autoencoder import swap_fast_autoencoder
from ldm.util import instantiate_from_config

TOLERANCE = 1e-4


def build_pair(seed: int = 1) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our first-stage ``AutoencoderKL`` with random weights and diffusers' with the same weights."""
    from diffusers import AutoencoderKL

    ours = randomize_(instantiate_from_config(sd_config().first_stage_config), seed)
    theirs = AutoencoderKL(**vae_diffusers_config(ours))
    theirs.load_state_dict(vae_to_diffusers(ours), strict=True)
    return ours, theirs.eval()


def _one_run(fn: Callable[[], object]) -> tuple[float, float | None]:
    """Seconds and peak memory (MiB) of one call of ``fn``."""
    start = time.perf_counter()
    peak = peak_memory_mb(fn)
    return time.perf_counter() - start, peak


def run(latent: int = 64, repeats: int = 3, seed: int = 1, large_latent: int | None = 128,
        tiling: tuple[int, int] = (64, 16)) -> list[Row]:
    """Decode time and peak memory, ours vs diffusers; then, once each, ours alone at ``large_latent`` (1024 px)
    untiled and tiled with ``tiling = (tile, overlap)``."""
    ours, theirs = build_pair(seed)
    swap_fast_autoencoder(ours)
    z = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(seed))
    step = {"ours": lambda: ours.decode(z), "theirs": lambda: theirs.decode(z).sample}
    with torch.no_grad():
        diff = (step["ours"]() - step["theirs"]()).abs().max().item()
        if diff > TOLERANCE:
            raise RuntimeError(f"VAE decodes differ from diffusers' by {diff:.2e} > {TOLERANCE}")
        seconds = median_times(step, repeats, warmup=0)
        mem = {name: peak_memory_mb(fn) for name, fn in step.items()}
    size = latent * 8
    rows = [Row(f"VAE decode {latent}x{latent}x4 -> {size}x{size}", seconds["ours"], seconds["theirs"], mem["ours"],
                mem["theirs"], diff)]
    if large_latent:
        del theirs
        z = torch.randn(1, 4, large_latent, large_latent, generator=torch.Generator().manual_seed(seed))
        size = large_latent * 8
        name = f"VAE decode {large_latent}x{large_latent}x4 -> {size}x{size}"
        with torch.no_grad():
            seconds, peak = _one_run(lambda: ours.decode(z))
            rows.append(Row(f"{name} (ours, untiled)", seconds, ours_mb=peak, note="one run"))
            set_vae_tiling(ours, *tiling)
            seconds, peak = _one_run(lambda: ours.decode(z))
            set_vae_tiling(ours, None)
        rows.append(Row(f"{name} (ours, tiled {tiling[0]}/{tiling[1]})", seconds, ours_mb=peak, note="one run"))
    return rows
