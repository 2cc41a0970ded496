"""Image-to-image: make variations of an input image guided by a prompt (SDEdit), with any sampler.

The init image is resized down to a multiple of what the model needs (the first stage's factor times the UNet's
downsampling, 64 for Stable Diffusion), encoded, noised to the start of the last ``int(strength * ddim_steps)``
steps of the sampler's schedule and denoised back over those steps (DDIM: ``stochastic_encode`` + ``decode``).

    python scripts/img2img.py --init-img sketch.png --prompt "a fantasy landscape" --strength 0.8
    python scripts/img2img.py --init-img sketch.png --prompt "a fantasy landscape" --sampler "Euler a"

Writes ``outdir/samples/00000.png, ...`` (numbered after the files already there) and ``outdir/grid-0000.png``.
Helpers that other code imports from this script: ``chunk``, ``load_model_from_config(config, ckpt,
verbose=False)`` and ``load_img(path)`` (resizes to multiples of 32; ``main`` uses the model's own multiple).
"""

from __future__ import annotations

import argparse
import logging

import torch
from einops import repeat

from ldm.cli.validation import float_in
from ldm.image_io import image_to_tensor, read_rgb_image
from ldm.inference import chunk, encode_latents, pixel_multiple, prompt_batches
from ldm.inference import load_eval_model as load_model_from_config
from ldm.models.diffusion.named_samplers import sampler_choice
from ldm.sampling_cli import (
    SamplingStart,
    load_script_model,
    run_script,
    sample_prompts,
    sampling_parser,
)

__all__ = ["chunk", "load_img", "load_model_from_config", "main", "parse_args"]

logger = logging.getLogger("img2img")


def load_img(path: str) -> torch.Tensor:
    """The image at ``path`` as ``(1, 3, H, W)`` in [-1, 1], resized (Lanczos) down to multiples of 32."""
    return image_to_tensor(read_rgb_image(path), 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = sampling_parser(__doc__, outdir="outputs/img2img-samples", n_iter=1, n_samples=2, scale=5.0, seed=42)
    parser.add_argument("--init-img", type=str, required=True, help="path to the input image")
    parser.add_argument("--strength", type=float_in(0.0, 1.0), default=0.75,
                        help="strength for noising/unnoising. 1.0 corresponds to full destruction of information "
                        "in init image")
    opt = parser.parse_args(argv)
    if not 0.0 <= opt.strength <= 1.0:
        parser.error(f"--strength {opt.strength} is outside [0.0, 1.0]")
    return opt


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_args(argv)
    sampler_choice(opt.sampler, opt.schedule, opt.ddim_eta)
    batches = prompt_batches(opt.prompt, opt.from_file, opt.n_samples)
    init_image = read_rgb_image(opt.init_img, max_pixels=opt.max_pixels)
    loaded = load_script_model(opt)
    sampler = loaded.ready_sampler(opt)
    logger.info("sampler: %r; the last %d of %d steps", sampler, int(opt.strength * opt.ddim_steps), opt.ddim_steps)

    with loaded.sampling_scope():
        pixels = image_to_tensor(init_image, pixel_multiple(loaded.model)).to(loaded.device)
        init_latent = encode_latents(loaded.model, repeat(pixels, "1 ... -> b ...", b=opt.n_samples))
        fixed_noise = torch.randn_like(init_latent) if opt.fixed_code else None
        start = SamplingStart(init_latent=init_latent, noise=fixed_noise)
        sample_prompts(opt, loaded.model, sampler, batches, start)


if __name__ == "__main__":
    run_script(main)
