"""Text-to-image sampling with a latent diffusion model (Stable Diffusion v1, or the LDM text-to-image model).

    python scripts/txt2img.py --prompt "a photograph of an astronaut riding a horse" --plms
    python scripts/txt2img.py --prompt "a photograph of an astronaut riding a horse" --sampler "DPM++ 2M Karras" \
        --ddim_steps 20

Writes ``outdir/samples/00000.png, ...`` (numbered after the files already there) and ``outdir/grid-0000.png``,
invisibly watermarked ("StableDiffusionV1") when the `invisible-watermark` package is installed. No NSFW filter
runs: ``check_safety`` (from :mod:`ldm.safety`) is importable here but needs external weights.

Module-level helpers that other code imports from this script: ``chunk``, ``numpy_to_pil``,
``load_model_from_config(config, ckpt, verbose=False)`` (returns the model), ``put_watermark``,
``load_replacement``, ``check_safety``.
"""

from __future__ import annotations

import argparse
import logging

import torch

from ldm.cli.validation import int_in
from ldm.image_io import load_replacement, make_watermarker, numpy_to_pil, put_watermark
from ldm.inference import check_image_size, chunk, pixel_multiple, prompt_batches
from ldm.inference import load_eval_model as load_model_from_config
from ldm.models.diffusion.named_samplers import sampler_choice
from ldm.safety import check_safety
from ldm.sampling_cli import (
    SD_CKPT,
    SD_CONFIG,
    SamplingStart,
    load_script_model,
    run_script,
    sample_prompts,
    sampling_parser,
)

__all__ = [
    "check_safety",
    "chunk",
    "load_model_from_config",
    "load_replacement",
    "main",
    "numpy_to_pil",
    "parse_args",
    "put_watermark",
]

logger = logging.getLogger("txt2img")

LAION_CONFIG = "configs/latent-diffusion/txt2img-1p4B-eval.yaml"
LAION_CKPT = "models/ldm/text2img-large/model.ckpt"
OUTDIR = "outputs/txt2img-samples"
LAION_OUTDIR = "outputs/txt2img-samples-laion400m"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = sampling_parser(__doc__, outdir=OUTDIR, n_iter=2, n_samples=3, scale=7.5, seed=None)
    parser.add_argument("--laion400m", action="store_true",
                        help=f"use the LDM text-to-image model trained on LAION-400M: --config {LAION_CONFIG}, "
                        f"--ckpt {LAION_CKPT}, --outdir {LAION_OUTDIR} instead of the Stable Diffusion defaults")
    parser.add_argument("--H", type=int_in(1), default=512, help="image height, in pixel space")
    parser.add_argument("--W", type=int_in(1), default=512, help="image width, in pixel space")
    opt = parser.parse_args(argv)
    if opt.laion400m:
        logger.info("Falling back to the LAION 400M model...")
        for name, sd_default, laion_default in (
            ("config", SD_CONFIG, LAION_CONFIG), ("ckpt", SD_CKPT, LAION_CKPT), ("outdir", OUTDIR, LAION_OUTDIR)
        ):
            if getattr(opt, name) == sd_default:
                setattr(opt, name, laion_default)
    return opt


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_args(argv)
    sampler_choice(opt.sampler, opt.schedule, opt.ddim_eta)
    batches = prompt_batches(opt.prompt, opt.from_file, opt.n_samples)
    check_image_size(opt.H, opt.W, opt.f)
    loaded = load_script_model(opt)
    check_image_size(opt.H, opt.W, pixel_multiple(loaded.model), why="--f times the UNet's downsampling")
    sampler = loaded.ready_sampler(opt)
    logger.info("sampler: %r, %d steps", sampler, opt.ddim_steps)

    watermark = make_watermarker()
    shape = (opt.C, opt.H // opt.f, opt.W // opt.f)
    start_code = torch.randn((opt.n_samples, *shape), device=loaded.device) if opt.fixed_code else None
    with loaded.sampling_scope():
        sample_prompts(opt, loaded.model, sampler, batches, SamplingStart(shape=shape, noise=start_code), watermark)


if __name__ == "__main__":
    run_script(main)
