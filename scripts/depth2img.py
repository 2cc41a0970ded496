"""Depth-to-image: new images with the depth of an input image, guided by a prompt (SD 2.x depth model).

The init image is resized down to a multiple of what the model needs (64 for the SD 2.x depth model), encoded,
noised to the start of the last ``int(strength * ddim_steps)`` steps of the sampler's schedule and denoised back
over those steps, every step conditioned on the depth: the model's MiDaS estimate of the init image (or the map of
``--depth``) on the latent grid, normalised per sample to [-1, 1].

    python scripts/depth2img.py --init-img room.png --prompt "a cozy cabin interior" --strength 0.9
    python scripts/depth2img.py --init-img room.png --depth room_depth.png --prompt "a spaceship interior" \\
        --sampler "Euler a"

Writes ``outdir/samples/00000.png, ...`` (numbered after the files already there) and ``outdir/grid-0000.png``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from einops import repeat
from tqdm import tqdm, trange

from ldm.conditioned_sampling import depth_concat, hybrid_conditioning, pil_to_depth
from ldm.image_io import image_to_tensor, make_watermarker, read_image, save_grid, save_samples, to_unit_range
from ldm.inference import (
    check_latent_geometry,
    choose_device,
    decode_latents,
    encode_latents,
    latent_factor,
    load_sampling_model,
    make_sampler,
    optimize_for_inference,
    pixel_multiple,
    precision_scope,
    prompt_batches,
    seed_everything,
    text_conditioning,
)
from ldm.models.diffusion.named_samplers import sampler_choice
from ldm.sampling_cli import NO_SAFETY_CHECKER, add_sampling_arguments, chosen_sampler, run_script, speed_options

__all__ = ["main", "parse_args"]

logger = logging.getLogger("depth2img")

CONFIG = "configs/stable-diffusion/v2-midas-inference.yaml"
CKPT = "models/ldm/stable-diffusion-v2/512-depth-ema.ckpt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, epilog=NO_SAFETY_CHECKER,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_arguments(parser, outdir="outputs/depth2img-samples", n_iter=1, n_samples=1, scale=9.0, seed=42)
    parser.set_defaults(config=CONFIG, ckpt=CKPT, f=None, C=None)
    parser.add_argument("--init-img", type=str, required=True, help="path to the input image")
    parser.add_argument("--strength", type=float, default=0.9,
                        help="strength for noising/unnoising. 1.0 corresponds to full destruction of information "
                        "in init image (the depth still conditions every step)")
    parser.add_argument("--depth", type=str, default=None,
                        help="a depth-map image (grey-scale, bright = near) to condition on instead of the model's "
                        "MiDaS estimate of --init-img")
    opt = parser.parse_args(argv)
    opt.sampler = chosen_sampler(parser, opt)
    return opt


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_args(argv)
    if not 0.0 <= opt.strength <= 1.0:
        raise ValueError(f"--strength {opt.strength} is outside [0.0, 1.0]; pass e.g. --strength 0.9")
    sampler_choice(opt.sampler, opt.schedule, opt.ddim_eta)
    batches = prompt_batches(opt.prompt, opt.from_file, opt.n_samples)
    init_image = read_image(opt.init_img, "--init-img", "init image")
    depth_map = None if opt.depth is None else pil_to_depth(read_image(opt.depth, "--depth", "depth map", mode="L"))
    device = choose_device(opt.device)
    precision = precision_scope(opt.precision, device)
    speed = speed_options(opt)
    model = load_sampling_model(opt, device)
    if not hasattr(model, "depth_conditioning"):
        raise ValueError(f"--config {opt.config} builds a {type(model).__name__}, not a depth-to-image model "
                         f"(LatentDepth2ImageDiffusion); use --config {CONFIG} with its checkpoint")
    check_latent_geometry(model, opt.f or latent_factor(model), opt.C or model.channels)
    optimize_for_inference(model, **speed)
    seed_everything(opt.seed)
    sampler = make_sampler(opt.sampler, model, schedule=opt.schedule)
    logger.info("sampler: %r; the last %d of %d steps", sampler, int(opt.strength * opt.ddim_steps), opt.ddim_steps)

    outdir = Path(opt.outdir)
    sample_dir = outdir / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    watermark = make_watermarker("SDV2")
    all_samples = []
    with torch.no_grad(), precision, model.ema_scope():
        pixels = image_to_tensor(init_image, pixel_multiple(model)).to(device)
        init_latent = encode_latents(model, repeat(pixels, "1 ... -> b ...", b=opt.n_samples))
        depth = depth_concat(model, pixels, init_latent.shape[-2:],
                             None if depth_map is None else depth_map.to(device))
        fixed_noise = torch.randn_like(init_latent) if opt.fixed_code else None
        for _ in trange(opt.n_iter, desc="Sampling"):
            for prompts in tqdm(batches, desc="data"):
                batch = len(prompts)
                c, uc = text_conditioning(model, prompts, opt.negative_prompt, opt.scale)
                cond, uncond = hybrid_conditioning(repeat(depth, "1 ... -> b ...", b=batch), c, uc)
                samples = sampler.img2img(
                    init_latent[:batch], opt.strength, opt.ddim_steps, cond, unconditional_guidance_scale=opt.scale,
                    unconditional_conditioning=uncond, eta=opt.ddim_eta,
                    noise=None if fixed_noise is None else fixed_noise[:batch],
                )
                images = to_unit_range(decode_latents(model, samples)).cpu()
                if not opt.skip_save:
                    save_samples(images, sample_dir, watermark)
                all_samples.append(images)
    if not opt.skip_grid:
        save_grid(all_samples, outdir, opt.n_rows or opt.n_samples, watermark)
    logger.info("Your samples are ready and waiting for you here: %s", outdir)


if __name__ == "__main__":
    run_script(main)
