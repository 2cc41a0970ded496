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
from pathlib import Path

import torch
from einops import repeat
from tqdm import tqdm, trange

from ldm.image_io import image_to_tensor, read_rgb_image, save_grid, save_samples, to_unit_range
from ldm.inference import (
    check_latent_geometry,
    choose_device,
    chunk,
    decode_latents,
    encode_latents,
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
from ldm.sampling_cli import NO_SAFETY_CHECKER, add_sampling_arguments, chosen_sampler, run_script, speed_options

__all__ = ["chunk", "load_img", "load_model_from_config", "main", "parse_args"]

logger = logging.getLogger("img2img")


def load_img(path: str) -> torch.Tensor:
    """The image at ``path`` as ``(1, 3, H, W)`` in [-1, 1], resized (Lanczos) down to multiples of 32."""
    return image_to_tensor(read_rgb_image(path), 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, epilog=NO_SAFETY_CHECKER,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_arguments(parser, outdir="outputs/img2img-samples", n_iter=1, n_samples=2, scale=5.0, seed=42)
    parser.add_argument("--init-img", type=str, required=True, help="path to the input image")
    parser.add_argument("--strength", type=float, default=0.75,
                        help="strength for noising/unnoising. 1.0 corresponds to full destruction of information "
                        "in init image")
    opt = parser.parse_args(argv)
    opt.sampler = chosen_sampler(parser, opt)
    if not 0.0 <= opt.strength <= 1.0:
        parser.error(f"--strength {opt.strength} is outside [0.0, 1.0]")
    return opt


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_args(argv)
    sampler_choice(opt.sampler, opt.schedule, opt.ddim_eta)
    batches = prompt_batches(opt.prompt, opt.from_file, opt.n_samples)
    init_image = read_rgb_image(opt.init_img)
    device = choose_device(opt.device)
    precision = precision_scope(opt.precision, device)
    speed = speed_options(opt)
    model = load_sampling_model(opt, device)
    check_latent_geometry(model, opt.f, opt.C)
    optimize_for_inference(model, **speed)
    seed_everything(opt.seed)
    sampler = make_sampler(opt.sampler, model, schedule=opt.schedule)
    logger.info("sampler: %r; the last %d of %d steps", sampler, int(opt.strength * opt.ddim_steps), opt.ddim_steps)

    outdir = Path(opt.outdir)
    sample_dir = outdir / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)

    all_samples = []
    with torch.no_grad(), precision, model.ema_scope():
        pixels = image_to_tensor(init_image, pixel_multiple(model)).to(device)
        pixels = repeat(pixels, "1 ... -> b ...", b=opt.n_samples)
        init_latent = encode_latents(model, pixels)
        fixed_noise = torch.randn_like(init_latent) if opt.fixed_code else None
        for _ in trange(opt.n_iter, desc="Sampling"):
            for prompts in tqdm(batches, desc="data"):
                batch = len(prompts)
                c, uc = text_conditioning(model, prompts, opt.negative_prompt, opt.scale)
                samples = sampler.img2img(
                    init_latent[:batch], opt.strength, opt.ddim_steps, c, unconditional_guidance_scale=opt.scale,
                    unconditional_conditioning=uc, eta=opt.ddim_eta,
                    noise=None if fixed_noise is None else fixed_noise[:batch],
                )
                images = to_unit_range(decode_latents(model, samples)).cpu()
                if not opt.skip_save:
                    save_samples(images, sample_dir)
                all_samples.append(images)
    if not opt.skip_grid:
        save_grid(all_samples, outdir, opt.n_rows or opt.n_samples)
    logger.info("Your samples are ready and waiting for you here: %s", outdir)


if __name__ == "__main__":
    run_script(main)
