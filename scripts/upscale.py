"""x4 upscaling with the SD 2.x latent upscaler, guided by a prompt.

The low-resolution image is noised to ``--noise_level`` by the model's ``low_scale_model`` and conditions every step
twice: concatenated to the latent (whose grid is the low-res image's, the first stage being f=4) and as the level's
class embedding. The output is 4x the low-res image: give ``--H``/``--W`` for the output size (the low-res image is
resized to a quarter of it), or leave them out for 4x the image's own size (resized down to a multiple of 8).

    python scripts/upscale.py --init-img small.png --prompt "a professional photograph of a cat" --noise_level 20

Writes ``outdir/samples/00000.png, ...`` (numbered after the files already there) and ``outdir/grid-0000.png``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from einops import repeat
from PIL import Image
from tqdm import tqdm, trange

from ldm.conditioned_sampling import hybrid_conditioning, noise_augmented, pil_to_pixels
from ldm.image_io import image_to_tensor, make_watermarker, read_image, save_grid, save_samples, to_unit_range
from ldm.inference import (
    check_image_size,
    check_latent_geometry,
    choose_device,
    decode_latents,
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

logger = logging.getLogger("upscale")

CONFIG = "configs/stable-diffusion/x4-upscaling.yaml"
CKPT = "models/ldm/stable-diffusion-v2/x4-upscaler-ema.ckpt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, epilog=NO_SAFETY_CHECKER,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_arguments(parser, outdir="outputs/upscale-samples", n_iter=1, n_samples=1, scale=9.0, seed=42)
    parser.set_defaults(config=CONFIG, ckpt=CKPT, f=None, C=None, prompt="a high quality professional photograph")
    parser.add_argument("--init-img", type=str, required=True, help="path to the low-resolution input image")
    parser.add_argument("--noise_level", type=int, default=20,
                        help="the noise augmentation level of the low-res image, 0 (none) to the model's "
                        "max_noise_level (350 for the x4 upscaler); more noise lets the model invent more detail")
    parser.add_argument("--H", type=int, default=None,
                        help="output height in pixels (default: 4x the image's; a multiple of 32 for the x4 upscaler)")
    parser.add_argument("--W", type=int, default=None,
                        help="output width in pixels (default: 4x the image's; a multiple of 32 for the x4 upscaler)")
    opt = parser.parse_args(argv)
    opt.sampler = chosen_sampler(parser, opt)
    return opt


def check_upscaler(model: torch.nn.Module, config: str, noise_level: int) -> None:
    """``ValueError`` naming the fix unless the model is a latent upscaler and ``noise_level`` one of its levels."""
    low_scale = getattr(model, "low_scale_model", None)
    if low_scale is None:
        raise ValueError(f"--config {config} builds a {type(model).__name__}, not a latent upscaler "
                         f"(LatentUpscaleDiffusion); use --config {CONFIG} with its checkpoint")
    highest = getattr(low_scale, "max_noise_level", 0)
    if not 0 <= noise_level <= highest:
        raise ValueError(f"--noise_level {noise_level} is outside the model's levels 0..{highest}; pass e.g. "
                         f"--noise_level {min(20, highest)}")


def low_res_pixels(image: Image.Image, opt: argparse.Namespace, model: torch.nn.Module) -> torch.Tensor:
    """The low-res image ``(1, 3, H / f, W / f)`` in [-1, 1] for an output of ``--H`` x ``--W`` (f the first
    stage's factor), or resized down to a multiple of (the model's multiple) / f without them."""
    factor, multiple = latent_factor(model), pixel_multiple(model)
    if (opt.H is None) != (opt.W is None):
        given, missing = ("--H", "--W") if opt.W is None else ("--W", "--H")
        raise ValueError(f"{given} needs {missing} too; pass both (the output size) or neither (4x the image)")
    if opt.H is None:
        return image_to_tensor(image, multiple // factor)
    check_image_size(opt.H, opt.W, multiple, why=f"the first stage's factor {factor} times the UNet's downsampling")
    return pil_to_pixels(image, (opt.W // factor, opt.H // factor))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_args(argv)
    sampler_choice(opt.sampler, opt.schedule, opt.ddim_eta)
    batches = prompt_batches(opt.prompt, opt.from_file, opt.n_samples)
    image = read_image(opt.init_img, "--init-img", "init image")
    device = choose_device(opt.device)
    precision = precision_scope(opt.precision, device)
    speed = speed_options(opt)
    model = load_sampling_model(opt, device)
    check_upscaler(model, opt.config, opt.noise_level)
    check_latent_geometry(model, opt.f or latent_factor(model), opt.C or model.channels)
    low_res = low_res_pixels(image, opt, model).to(device)
    optimize_for_inference(model, **speed)
    seed_everything(opt.seed)
    sampler = make_sampler(opt.sampler, model, schedule=opt.schedule)
    shape = (model.channels, *low_res.shape[-2:])
    logger.info("sampler: %r, %d steps; %dx%d -> %dx%d", sampler, opt.ddim_steps, low_res.shape[-1],
                low_res.shape[-2], low_res.shape[-1] * latent_factor(model), low_res.shape[-2] * latent_factor(model))

    outdir = Path(opt.outdir)
    sample_dir = outdir / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    watermark = make_watermarker("SDV2")
    start_code = torch.randn((opt.n_samples, *shape), device=device) if opt.fixed_code else None
    all_samples = []
    with torch.no_grad(), precision, model.ema_scope():
        noised, levels = noise_augmented(model, repeat(low_res, "1 ... -> b ...", b=opt.n_samples), opt.noise_level)
        for _ in trange(opt.n_iter, desc="Sampling"):
            for prompts in tqdm(batches, desc="data"):
                batch = len(prompts)
                c, uc = text_conditioning(model, prompts, opt.negative_prompt, opt.scale)
                cond, uncond = hybrid_conditioning(noised[:batch], c, uc, c_adm=levels[:batch])
                samples, _ = sampler.sample(
                    S=opt.ddim_steps, conditioning=cond, batch_size=batch, shape=shape, verbose=False,
                    unconditional_guidance_scale=opt.scale, unconditional_conditioning=uncond, eta=opt.ddim_eta,
                    x_T=None if start_code is None else start_code[:batch],
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
