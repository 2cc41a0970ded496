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
from pathlib import Path

import torch
from tqdm import tqdm, trange

from ldm.image_io import (
    load_replacement,
    make_watermarker,
    numpy_to_pil,
    put_watermark,
    save_grid,
    save_samples,
    to_unit_range,
)
from ldm.inference import (
    check_image_size,
    check_latent_geometry,
    choose_device,
    chunk,
    decode_latents,
    load_sampling_model,
    make_sampler,
    optimize_for_inference,
    pixel_multiple,
    precision_scope,
    prompt_batches,
    seed_everything,
    text_conditioning,
)
from ldm.inference import load_eval_model as load_model_from_config
from ldm.models.diffusion.named_samplers import sampler_choice
from ldm.safety import check_safety
from ldm.sampling_cli import (
    NO_SAFETY_CHECKER,
    SD_CKPT,
    SD_CONFIG,
    add_sampling_arguments,
    chosen_sampler,
    run_script,
    speed_options,
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
    parser = argparse.ArgumentParser(description=__doc__, epilog=NO_SAFETY_CHECKER,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_arguments(parser, outdir=OUTDIR, n_iter=2, n_samples=3, scale=7.5, seed=None)
    parser.add_argument("--laion400m", action="store_true",
                        help=f"use the LDM text-to-image model trained on LAION-400M: --config {LAION_CONFIG}, "
                        f"--ckpt {LAION_CKPT}, --outdir {LAION_OUTDIR} instead of the Stable Diffusion defaults")
    parser.add_argument("--H", type=int, default=512, help="image height, in pixel space")
    parser.add_argument("--W", type=int, default=512, help="image width, in pixel space")
    opt = parser.parse_args(argv)
    opt.sampler = chosen_sampler(parser, opt)
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
    device = choose_device(opt.device)
    precision = precision_scope(opt.precision, device)
    speed = speed_options(opt)
    model = load_sampling_model(opt, device)
    check_latent_geometry(model, opt.f, opt.C)
    check_image_size(opt.H, opt.W, pixel_multiple(model), why="--f times the UNet's downsampling")
    optimize_for_inference(model, **speed)
    seed_everything(opt.seed)
    sampler = make_sampler(opt.sampler, model, schedule=opt.schedule)
    logger.info("sampler: %r, %d steps", sampler, opt.ddim_steps)

    outdir = Path(opt.outdir)
    sample_dir = outdir / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    watermark = make_watermarker()
    shape = (opt.C, opt.H // opt.f, opt.W // opt.f)
    start_code = torch.randn((opt.n_samples, *shape), device=device) if opt.fixed_code else None

    all_samples = []
    with torch.no_grad(), precision, model.ema_scope():
        for _ in trange(opt.n_iter, desc="Sampling"):
            for prompts in tqdm(batches, desc="data"):
                c, uc = text_conditioning(model, prompts, opt.negative_prompt, opt.scale)
                samples, _ = sampler.sample(
                    S=opt.ddim_steps,
                    conditioning=c,
                    batch_size=len(prompts),
                    shape=shape,
                    verbose=False,
                    unconditional_guidance_scale=opt.scale,
                    unconditional_conditioning=uc,
                    eta=opt.ddim_eta,
                    x_T=None if start_code is None else start_code[: len(prompts)],
                )
                images = to_unit_range(decode_latents(model, samples)).cpu()
                if not opt.skip_save:
                    save_samples(images, sample_dir, watermark)
                if not opt.skip_grid:
                    all_samples.append(images)
    if not opt.skip_grid:
        save_grid(all_samples, outdir, opt.n_rows or opt.n_samples, watermark)
    logger.info("Your samples are ready and waiting for you here: %s", outdir)


if __name__ == "__main__":
    run_script(main)
