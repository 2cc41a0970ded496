"""Inpainting: repaint the white region of a mask, with the LDM inpainting model or an SD 2.x inpainting model.

Two modes, chosen by the flags:

- ``--indir DIR`` (latent-diffusion's ``scripts/inpaint.py``, the LDM inpainting model, default
  ``--config models/ldm/inpainting_big/config.yaml --ckpt models/ldm/inpainting_big/last.ckpt``): every
  ``DIR/<name>_mask.png`` with its ``DIR/<name>.png`` is inpainted and saved as ``outdir/<name>.png``; the pixels
  outside the mask are the input's own.

      python scripts/inpaint.py --indir data/inpainting_examples --outdir outputs/inpainting_results --steps 50

- ``--image FILE --mask FILE`` (an SD 2.x inpainting model, default
  ``--config configs/stable-diffusion/v2-inpainting-inference.yaml``): the whole image is sampled anew with the
  prompt, conditioned on the mask and the masked image; the image is resized down to a multiple of 64 (the model's
  multiple). Writes ``outdir/samples/00000.png, ...`` and ``outdir/grid-0000.png``.

      python scripts/inpaint.py --image dog.png --mask dog_mask.png --prompt "a cat on a bench" \\
          --sampler "DPM++ 2M Karras" --ddim_steps 25

Masks are grey-scale images, white (≥ 50 %) = repaint.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from einops import rearrange, repeat
from PIL import Image
from tqdm import tqdm

from ldm.cli.validation import int_in
from ldm.conditioned_sampling import (
    inpainting_concat,
    ldm_inpainting_batch,
    ldm_inpainting_conditioning,
    paste_prediction,
    pil_to_mask,
    pil_to_pixels,
)
from ldm.image_io import make_watermarker, read_image, save_picture, to_pil, to_unit_range
from ldm.inference import decode_latents, latent_factor, pixel_multiple, prompt_batches
from ldm.models.diffusion.named_samplers import NamedSampler, sampler_choice
from ldm.sampling_cli import (
    LoadedModel,
    SamplingStart,
    load_script_model,
    run_script,
    sample_prompts,
    sampling_parser,
)

__all__ = ["find_pairs", "main", "parse_args"]

logger = logging.getLogger("inpaint")

LDM_CONFIG = "models/ldm/inpainting_big/config.yaml"
LDM_CKPT = "models/ldm/inpainting_big/last.ckpt"
SD2_CONFIG = "configs/stable-diffusion/v2-inpainting-inference.yaml"
SD2_CKPT = "models/ldm/stable-diffusion-v2/512-inpainting-ema.ckpt"
OUTDIR = "outputs/inpainting-samples"
MODES = (
    "pass either --indir DIR (the LDM inpainting model: DIR/<name>.png with DIR/<name>_mask.png) or "
    "--image FILE --mask FILE (an SD 2.x inpainting model)"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = sampling_parser(__doc__, outdir=OUTDIR, n_iter=1, n_samples=1, scale=10.0, seed=None, prompt=None,
                             config=None, ckpt=None, f=None, C=None)
    arg = parser.add_argument
    arg("--indir", type=str, nargs="?", default=None,
        help="LDM mode: dir containing image-mask pairs (`example.png` and `example_mask.png`)")
    arg("--steps", dest="ddim_steps", type=int_in(1), default=argparse.SUPPRESS,
        help="number of sampling steps (the same as --ddim_steps)")
    arg("--image", type=str, default=None, help="SD 2.x mode: the image to inpaint")
    arg("--mask", type=str, default=None,
        help="SD 2.x mode: the mask, a grey-scale image of the same size (white = repaint)")
    return parser.parse_args(argv)


def choose_mode(opt: argparse.Namespace) -> str:
    """``"ldm"`` (``--indir``) or ``"sd2"`` (``--image`` + ``--mask``); fills in the mode's default --config,
    --ckpt and --prompt. A mixture, or neither, raises ``ValueError`` naming the fix."""
    sd2_flags = [flag for flag, value in (("--image", opt.image), ("--mask", opt.mask)) if value is not None]
    if opt.indir is not None and sd2_flags:
        raise ValueError(f"--indir and {' / '.join(sd2_flags)} choose different modes; {MODES}")
    if opt.indir is not None:
        if opt.prompt is not None or opt.negative_prompt:
            raise ValueError("the LDM inpainting model (--indir) takes no prompt; drop --prompt/--negative_prompt, "
                             "or use --image FILE --mask FILE with an SD 2.x inpainting model")
        opt.config = opt.config or LDM_CONFIG
        opt.ckpt = opt.ckpt or LDM_CKPT
        return "ldm"
    if len(sd2_flags) == 1:
        missing = "--mask" if opt.image is not None else "--image"
        raise ValueError(f"{sd2_flags[0]} needs {missing} too; pass --image FILE --mask FILE")
    if not sd2_flags:
        raise ValueError(f"nothing to inpaint: {MODES}")
    opt.config = opt.config or SD2_CONFIG
    opt.ckpt = opt.ckpt or SD2_CKPT
    opt.prompt = "" if opt.prompt is None else opt.prompt
    return "sd2"


def find_pairs(indir: str | Path) -> list[tuple[Path, Path]]:
    """``(DIR/<name>.png, DIR/<name>_mask.png)`` for every mask in ``indir``, sorted by the mask's name."""
    folder = Path(indir)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder not found: {folder} (from --indir)")
    masks = sorted(folder.glob("*_mask.png"))
    if not masks:
        raise ValueError(f"no <name>_mask.png files in {folder} (from --indir); put each mask beside its <name>.png")
    pairs = [(mask.with_name(mask.name[: -len("_mask.png")] + ".png"), mask) for mask in masks]
    for image, mask in pairs:
        if not image.is_file():
            raise FileNotFoundError(f"{mask.name} in {folder} has no image {image.name} beside it")
    return pairs


def check_model(model: torch.nn.Module, mode: str, config: str) -> None:
    """``ValueError`` naming the fix when the loaded model does not belong to the chosen mode."""
    is_sd2 = hasattr(model, "masked_image_key") and hasattr(model, "concat_keys")
    if mode == "sd2" and not is_sd2:
        raise ValueError(f"--config {config} builds a {type(model).__name__}, not an SD 2.x inpainting model "
                         f"(LatentInpaintDiffusion, e.g. --config {SD2_CONFIG}); for the LDM inpainting model use "
                         "--indir DIR")
    if mode == "ldm" and (is_sd2 or getattr(model.model, "conditioning_key", None) != "concat"):
        raise ValueError(f"--config {config} builds a {type(model).__name__} that is not the LDM inpainting model "
                         f"(conditioning_key concat, the first stage as conditioner, e.g. {LDM_CONFIG}); for an "
                         "SD 2.x inpainting model use --image FILE --mask FILE --prompt TEXT")


def read_pair(image_path: Path, mask_path: Path, multiple: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The 8-bit RGB image ``(H, W, 3)``, the same as ``(1, 3, H, W)`` in [0, 1] and its binary mask
    ``(1, 1, H, W)``; sizes must agree and be multiples of ``multiple``."""
    image = np.asarray(read_image(image_path, "--indir"))
    mask = read_image(mask_path, "--indir", "mask", mode="L")
    height, width = image.shape[:2]
    if mask.size != (width, height):
        raise ValueError(f"{mask_path.name} is {mask.size[0]}x{mask.size[1]} but {image_path.name} is "
                         f"{width}x{height}; make the mask the image's size")
    if height % multiple or width % multiple:
        raise ValueError(f"{image_path.name} is {width}x{height}; the model needs sides that are multiples of "
                         f"{multiple}: crop or pad it to {width - width % multiple or multiple}x"
                         f"{height - height % multiple or multiple}")
    unit = rearrange(torch.from_numpy(image.astype(np.float32) / 255.0), "h w c -> 1 c h w")
    return image, unit, pil_to_mask(mask, (width, height))


def inpaint_folder(opt: argparse.Namespace, loaded: LoadedModel, sampler: NamedSampler) -> list[Path]:
    """latent-diffusion's inpainting loop: for each pair, c = cat[τ(masked image), mask on τ's grid], sample a
    latent of ``(C_c − 1, h, w)``, decode, and paste the prediction into the masked region."""
    model = loaded.model
    pairs = find_pairs(opt.indir)
    logger.info("Found %d inputs.", len(pairs))
    outdir = Path(opt.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    with torch.no_grad(), model.ema_scope():
        for image_path, mask_path in tqdm(pairs, desc="inpainting"):
            image_u8, image, mask = read_pair(image_path, mask_path, pixel_multiple(model))
            batch = {key: value.to(loaded.device) for key, value in ldm_inpainting_batch(image, mask).items()}
            c = ldm_inpainting_conditioning(model, batch)
            with loaded.precision:
                latents, _ = sampler.sample(S=opt.ddim_steps, conditioning=c, batch_size=c.shape[0],
                                            shape=(c.shape[1] - 1, *c.shape[2:]), verbose=False, eta=opt.ddim_eta)
            predicted = np.asarray(to_pil(to_unit_range(decode_latents(model, latents))[0]))
            inpainted = paste_prediction(image_u8, predicted, mask[0, 0].numpy())
            written.append(outdir / image_path.name)
            save_picture(Image.fromarray(inpainted), written[-1])
    return written


def read_image_and_mask(opt: argparse.Namespace) -> tuple[Image.Image, Image.Image]:
    """The ``--image`` (RGB) and ``--mask`` (grey-scale) files; they must have the same size."""
    image = read_image(opt.image, "--image", max_pixels=opt.max_pixels)
    mask_image = read_image(opt.mask, "--mask", "mask", mode="L", max_pixels=opt.max_pixels)
    if mask_image.size != image.size:
        raise ValueError(f"the mask is {mask_image.size[0]}x{mask_image.size[1]} but the image is "
                         f"{image.size[0]}x{image.size[1]}; make the mask (--mask) the image's size")
    return image, mask_image


def inpaint_image(opt: argparse.Namespace, loaded: LoadedModel, sampler: NamedSampler, image: Image.Image,
                  mask_image: Image.Image) -> Path:
    """SD 2.x inpainting: c = {c_concat: [mask on the latent grid, z(masked image)], c_crossattn: [text]},
    guided by the negative prompt's; samples and a grid under ``outdir``."""
    model = loaded.model
    multiple = pixel_multiple(model)
    width, height = (side - side % multiple for side in image.size)
    if min(width, height) == 0:
        raise ValueError(f"the image is {image.size[0]}x{image.size[1]}; it needs at least {multiple} pixels per side")
    logger.info("image of size %s resized to (%d, %d)", image.size, width, height)
    pixels = pil_to_pixels(image, (width, height)).to(loaded.device)
    mask = pil_to_mask(mask_image, (width, height)).to(loaded.device)
    batches = prompt_batches(opt.prompt, opt.from_file, opt.n_samples)
    shape = (model.channels, height // latent_factor(model), width // latent_factor(model))
    start_code = torch.randn((opt.n_samples, *shape), device=loaded.device) if opt.fixed_code else None

    watermark = make_watermarker("SDV2")
    with loaded.sampling_scope():
        c_concat = repeat(inpainting_concat(model, pixels, mask), "1 ... -> b ...", b=opt.n_samples)
        start = SamplingStart(shape=shape, noise=start_code, c_concat=c_concat)
        return sample_prompts(opt, model, sampler, batches, start, watermark)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_args(argv)
    mode = choose_mode(opt)
    sampler_choice(opt.sampler, opt.schedule, opt.ddim_eta)
    inputs = read_image_and_mask(opt) if mode == "sd2" else find_pairs(opt.indir)
    loaded = load_script_model(opt, lambda model: check_model(model, mode, opt.config))
    sampler = loaded.ready_sampler(opt)
    if mode == "ldm":
        inpaint_folder(opt, loaded, sampler)
        logger.info("Your samples are ready and waiting for you here: %s", opt.outdir)
    else:
        inpaint_image(opt, loaded, sampler, *inputs)


if __name__ == "__main__":
    run_script(main)
