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

import torch
from einops import repeat
from PIL import Image

from ldm.cli.validation import int_in
from ldm.conditioned_sampling import noise_augmented, pil_to_pixels
from ldm.image_io import image_to_tensor, make_watermarker, read_image
from ldm.inference import check_image_size, latent_factor, pixel_multiple, prompt_batches
from ldm.models.diffusion.named_samplers import sampler_choice
from ldm.sampling_cli import (
    SamplingStart,
    load_script_model,
    run_script,
    sample_prompts,
    sampling_parser,
)

__all__ = ["main", "parse_args"]

logger = logging.getLogger("upscale")

CONFIG = "configs/stable-diffusion/x4-upscaling.yaml"
CKPT = "models/ldm/stable-diffusion-v2/x4-upscaler-ema.ckpt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = sampling_parser(__doc__, outdir="outputs/upscale-samples", n_iter=1, n_samples=1, scale=9.0, seed=42,
                             config=CONFIG, ckpt=CKPT, f=None, C=None, prompt="a high quality professional photograph")
    parser.add_argument("--init-img", type=str, required=True, help="path to the low-resolution input image")
    parser.add_argument("--noise_level", type=int_in(0), default=20,
                        help="the noise augmentation level of the low-res image, 0 (none) to the model's "
                        "max_noise_level (350 for the x4 upscaler); more noise lets the model invent more detail")
    parser.add_argument("--H", type=int_in(1), default=None,
                        help="output height in pixels (default: 4x the image's; a multiple of 32 for the x4 upscaler)")
    parser.add_argument("--W", type=int_in(1), default=None,
                        help="output width in pixels (default: 4x the image's; a multiple of 32 for the x4 upscaler)")
    return parser.parse_args(argv)


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
    image = read_image(opt.init_img, "--init-img", "init image", max_pixels=opt.max_pixels)
    loaded = load_script_model(opt, lambda model: check_upscaler(model, opt.config, opt.noise_level))
    model = loaded.model
    low_res = low_res_pixels(image, opt, model).to(loaded.device)
    sampler = loaded.ready_sampler(opt)
    shape = (model.channels, *low_res.shape[-2:])
    logger.info("sampler: %r, %d steps; %dx%d -> %dx%d", sampler, opt.ddim_steps, low_res.shape[-1],
                low_res.shape[-2], low_res.shape[-1] * latent_factor(model), low_res.shape[-2] * latent_factor(model))

    watermark = make_watermarker("SDV2")
    start_code = torch.randn((opt.n_samples, *shape), device=loaded.device) if opt.fixed_code else None
    with loaded.sampling_scope():
        noised, levels = noise_augmented(model, repeat(low_res, "1 ... -> b ...", b=opt.n_samples), opt.noise_level)
        start = SamplingStart(shape=shape, noise=start_code, c_concat=noised, c_adm=levels)
        sample_prompts(opt, model, sampler, batches, start, watermark)


if __name__ == "__main__":
    run_script(main)
