"""The whole-process peak resident set of one Stable Diffusion v1 UNet step, ours or diffusers', one per process.

    /usr/bin/time -v python -m bench.peak_rss ours --prepack --latent 32 --batch 2
    /usr/bin/time -v python -m bench.peak_rss diffusers --latent 32 --batch 2

Run each in its own process (the peak is the process's ``VmHWM``, which only grows). Random weights; prints the
resident set after each stage (build, speed options, first step, second step) and the peak.
"""

from __future__ import annotations

import argparse
import inspect
import re
import types

import torch

from bench.common import sd_config


def _mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def _report(stage: str) -> None:
    print(f"{stage:>24}: resident {_mib('VmRSS'):7.0f} MiB, peak {_mib('VmHWM'):7.0f} MiB", flush=True)


def _build_ours(opt: argparse.Namespace) -> torch.nn.Module:
    from ldm.inference import optimize_for_inference
    from ldm.util import instantiate_from_config

    unet = instantiate_from_config(sd_config().unet_config).eval()
    _report("built")
    options = {"prepack": opt.prepack, "channels_last": opt.channels_last}
    if "fast_blocks" in inspect.signature(optimize_for_inference).parameters:
        options["fast_blocks"] = not opt.reference_blocks
    optimize_for_inference(types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=unet)), **options)
    _report("speed options applied")
    return unet


def _build_diffusers() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    from bench.convert_diffusers import unet_diffusers_config
    from ldm.util import instantiate_from_config

    with torch.device("meta"):
        config = unet_diffusers_config(instantiate_from_config(sd_config().unet_config))
    unet = UNet2DConditionModel(**config).eval()
    _report("built")
    return unet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("impl", choices=("ours", "diffusers"))
    parser.add_argument("--prepack", action="store_true", help="ours: channels-last, prepacked convolutions")
    parser.add_argument("--channels_last", action="store_true", help="ours: channels-last UNet")
    parser.add_argument("--reference_blocks", action="store_true", help="ours: no fast-block swap")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    opt = parser.parse_args(argv)
    _report("start")
    unet = _build_ours(opt) if opt.impl == "ours" else _build_diffusers()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(opt.batch, 4, opt.latent, opt.latent, generator=gen)
    if opt.prepack or opt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.full((opt.batch,), 999)
    context = torch.randn(opt.batch, 77, 768, generator=gen)
    with torch.no_grad():
        for step in range(opt.steps):
            out = unet(x, t, context)
            out = getattr(out, "sample", out)
            _report(f"after step {step + 1}")
    print(f"peak resident set: {_mib('VmHWM'):.0f} MiB")


if __name__ == "__main__":
    main()
