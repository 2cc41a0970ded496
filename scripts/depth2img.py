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

import torch
from einops import repeat

from ldm.cli.validation import float_in
from ldm.conditioned_sampling import depth_concat, pil_to_depth
from ldm.image_io import image_to_tensor, make_watermarker, read_image
from ldm.inference import encode_latents, pixel_multiple, prompt_batches
from ldm.models.diffusion.named_samplers import sampler_choice
from ldm.sampling_cli import (
    SamplingStart,
    load_script_model,
    run_script,
    sample_prompts,
    sampling_parser,
)

__all__ = ["main", "parse_args"]

logger = logging.getLogger("depth2img")

CONFIG = "configs/stable-diffusion/v2-midas-inference.yaml"
CKPT = "models/ldm/stable-diffusion-v2/512-depth-ema.ckpt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = sampling_parser(__doc__, outdir="outputs/depth2img-samples", n_iter=1, n_samples=1, scale=9.0, seed=42,
                             config=CONFIG, ckpt=CKPT, f=None, C=None)
    parser.add_argument("--init-img", type=str, required=True, help="path to the input image")
    parser.add_argument("--strength", type=float_in(0.0, 1.0), default=0.9,
                        help="strength for noising/unnoising. 1.0 corresponds to full destruction of information "
                        "in init image (the depth still conditions every step)")
    parser.add_argument("--depth", type=str, default=None,
                        help="a depth-map image (grey-scale, bright = near) to condition on instead of the model's "
                        "MiDaS estimate of --init-img")
    return parser.parse_args(argv)


def check_depth_model(model: torch.nn.Module, config: str) -> None:
    """``ValueError`` naming the fix unless the model is a depth-to-image model."""
    if not hasattr(model, "depth_conditioning"):
        raise ValueError(f"--config {config} builds a {type(model).__name__}, not a depth-to-image model "
                         f"(LatentDepth2ImageDiffusion); use --config {CONFIG} with its checkpoint")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_args(argv)
    if not 0.0 <= opt.strength <= 1.0:
        raise ValueError(f"--strength {opt.strength} is outside [0.0, 1.0]; pass e.g. --strength 0.9")
    sampler_choice(opt.sampler, opt.schedule, opt.ddim_eta)
    batches = prompt_batches(opt.prompt, opt.from_file, opt.n_samples)
    init_image = read_image(opt.init_img, "--init-img", "init image", max_pixels=opt.max_pixels)
    depth_map = None if opt.depth is None else pil_to_depth(
        read_image(opt.depth, "--depth", "depth map", mode="L", max_pixels=opt.max_pixels))
    loaded = load_script_model(opt, lambda model: check_depth_model(model, opt.config))
    model, device = loaded.model, loaded.device
    sampler = loaded.ready_sampler(opt)
    logger.info("sampler: %r; the last %d of %d steps", sampler, int(opt.strength * opt.ddim_steps), opt.ddim_steps)

    watermark = make_watermarker("SDV2")
    with loaded.sampling_scope():
        pixels = image_to_tensor(init_image, pixel_multiple(model)).to(device)
        init_latent = encode_latents(model, repeat(pixels, "1 ... -> b ...", b=opt.n_samples))
        depth = depth_concat(model, pixels, init_latent.shape[-2:],
                             None if depth_map is None else depth_map.to(device))
        fixed_noise = torch.randn_like(init_latent) if opt.fixed_code else None
        start = SamplingStart(init_latent=init_latent, noise=fixed_noise,
                              c_concat=repeat(depth, "1 ... -> b ...", b=opt.n_samples))
        sample_prompts(opt, model, sampler, batches, start, watermark)


if __name__ == "__main__":
    run_script(main)
