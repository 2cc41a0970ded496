"""Command-line flags that ``scripts/txt2img.py`` and ``scripts/img2img.py`` share (the defaults that differ
between the two are parameters), and how the scripts end on bad input."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldm.checkpoint import CheckpointError
from ldm.models.diffusion.named_samplers import SCHEDULE_ALIASES, SCHEDULES, describe_samplers
from ldm.util import ConfigError

SD_CONFIG = "configs/stable-diffusion/v1-inference.yaml"
SD_CKPT = "models/ldm/stable-diffusion-v1/model.ckpt"
NO_SAFETY_CHECKER = (
    "No NSFW safety checker runs: it needs the external "
    "CompVis/stable-diffusion-safety-checker weights, so images are saved unfiltered."
)


def add_sampling_arguments(
    parser: argparse.ArgumentParser, *, outdir: str, n_iter: int, n_samples: int, scale: float, seed: int | None
) -> None:
    """Flags for prompts, output, the sampler, latent geometry, model files and device."""
    arg = parser.add_argument
    arg("--prompt", type=str, nargs="?", default="a painting of a virus monster playing guitar",
        help="the prompt to render")
    arg("--negative_prompt", type=str, default="",
        help="the unconditional text of classifier-free guidance (default: the empty prompt)")
    arg("--outdir", type=str, nargs="?", default=outdir, help=f"dir to write results to (default: {outdir})")
    arg("--skip_grid", action="store_true",
        help="do not save a grid, only individual samples. Helpful when evaluating lots of samples")
    arg("--skip_save", action="store_true", help="do not save individual samples. For speed measurements.")
    arg("--ddim_steps", type=int, default=50, help="number of sampling steps (of every sampler)")
    add_sampler_arguments(parser)
    arg("--fixed_code", action="store_true", help="if enabled, uses the same starting code across samples")
    arg("--ddim_eta", type=float, default=None,
        help="eta, the amount of fresh noise per step: DDIM (default 0.0, deterministic) and the ancestral and SDE "
        "samplers (default 1.0); a non-zero eta for a deterministic sampler is an error")
    arg("--n_iter", type=int, default=n_iter, help="sample this often")
    arg("--C", type=int, default=4, help="latent channels")
    arg("--f", type=int, default=8, help="downsampling factor (must match the model's first stage)")
    arg("--n_samples", type=int, default=n_samples,
        help="how many samples to produce for each given prompt. A.k.a. batch size")
    arg("--n_rows", type=int, default=0, help="images per row of the grid (default: n_samples)")
    arg("--scale", type=float, default=scale,
        help="unconditional guidance scale: eps = eps(x, uncond) + scale * (eps(x, cond) - eps(x, uncond))")
    arg("--from-file", type=str, help="if specified, load prompts from this file (one per line)")
    arg("--config", type=str, default=SD_CONFIG, help=f"path to config which constructs model (default: {SD_CONFIG})")
    arg("--ckpt", type=str, default=SD_CKPT,
        help=f"path to checkpoint of model, .ckpt or .safetensors (default: {SD_CKPT})")
    arg("--parameterization", type=str, choices=["eps", "x0", "v"], default=None,
        help="what the model predicts, replacing the config's model.params.parameterization (default: the "
        "config's; an SD 2.x checkpoint that looks like the other kind gets a warning naming the right config)")
    arg("--use_ema", action="store_true",
        help="use the checkpoint's EMA UNet weights (model_ema.*, in full-EMA checkpoints) instead of the raw ones")
    arg("--seed", type=int, default=seed,
        help="the seed (for reproducible sampling); a random seed when omitted" if seed is None else
        "the seed (for reproducible sampling)")
    arg("--precision", type=str, choices=["full", "autocast", "bf16", "fp16"], default="autocast",
        help="evaluate at this precision: full = float32; autocast (default) = float16 autocast on CUDA/MPS, "
        "float32 on the CPU; bf16 = bfloat16 autocast on the CPU or a CUDA GPU that supports it; fp16 = float16 "
        "autocast on CUDA/MPS. The autoencoder always runs in float32 (no black images from half-precision overflow)")
    arg("--device", type=str, default="auto", help="auto (CUDA, else MPS, else CPU), or a torch device name")
    add_speed_arguments(parser)


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sampler NAME`` and ``--schedule NAME``, with the original ``--plms`` / ``--dpm_solver`` switches."""
    arg = parser.add_argument
    arg("--sampler", type=str, default=None, metavar="NAME",
        help="the sampler, by its AUTOMATIC1111/ComfyUI name or snake-case alias (case-insensitive; default DDIM): "
        f"{describe_samplers()}. A schedule may follow the name, e.g. \"DPM++ 2M Karras\", \"Euler a Exponential\"")
    arg("--schedule", type=str.lower, default=None, choices=[*SCHEDULES, *SCHEDULE_ALIASES],
        help="the noise levels of the k-diffusion samplers (default normal: the model's own timesteps; uniform is "
        "normal); DDIM, PLMS and the DPM-Solvers space their steps themselves")
    arg("--plms", action="store_true", help="use plms sampling (the same as --sampler plms)")
    arg("--dpm_solver", action="store_true", help="use DPM-Solver++(2M) sampling (the same as --sampler dpm_solver)")


def chosen_sampler(parser: argparse.ArgumentParser, opt: argparse.Namespace) -> str:
    """The sampler name the flags ask for (``--sampler``, else ``plms``/``dpm_solver`` for the original switches,
    else ``ddim``); two sampler flags at once end the parser with an error."""
    switches = [flag for flag, on in (("--plms", opt.plms), ("--dpm_solver", opt.dpm_solver)) if on]
    if len(switches) > 1:
        parser.error("--plms and --dpm_solver exclude each other; pick one sampler (DDIM without either)")
    if switches and opt.sampler is not None:
        parser.error(f"{switches[0]} and --sampler {opt.sampler!r} both choose a sampler; keep only --sampler "
                     f"(--sampler {switches[0][2:]} is the same as {switches[0]})")
    if opt.sampler is not None:
        return opt.sampler
    return switches[0][2:] if switches else "ddim"


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """Speed and memory options; see ``optimize_for_inference``. The inference variants of the blocks are on by
    default (equal within float rounding; ``--reference_blocks`` samples on the reference blocks), the rest off."""
    arg = parser.add_argument
    arg("--reference_blocks", action="store_true",
        help="sample on the reference blocks instead of swapping in their inference variants from ldm.modules.fast "
        "(chunked in-place feed-forwards, the autoencoder's fast blocks; the same numbers "
        "within float rounding)")
    arg("--channels_last", action="store_true", help="run the UNet in channels-last memory format (same numbers)")
    arg("--prepack", action="store_true",
        help="CPU, float32 only: run the UNet channels-last with its convolutions pre-packed for oneDNN once and "
        "each upsampling conv fused with its nearest x2 upsampling (same numbers within float rounding, faster "
        "on the CPU)")
    arg("--compile", action="store_true",
        help="torch.compile the UNet (inductor); the first sampling step compiles and takes longer")
    arg("--attention_slicing", type=int, default=None, metavar="N",
        help="compute attention N query rows at a time (less memory for large images, a bit slower)")
    arg("--vae_tiling", action="store_true",
        help="decode the latents in overlapping tiles of 64 latent pixels (less memory for large images)")


def speed_options(opt: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``optimize_for_inference`` from the parsed flags; ``ValueError`` naming the fix for
    combinations that cannot work together."""
    if opt.prepack and opt.precision in ("bf16", "fp16"):
        raise ValueError(f"--prepack packs float32 convolutions, which --precision {opt.precision} would bypass; "
                         "drop --prepack or use --precision full")
    return {
        "fast_blocks": not opt.reference_blocks, "channels_last": opt.channels_last, "prepack": opt.prepack,
        "compile": opt.compile, "attention_slicing": opt.attention_slicing, "vae_tiling": opt.vae_tiling,
    }


#: Errors that mean bad input (a path, a file, a size, a setting) rather than a bug: a script reports them as one line.
BAD_INPUT_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, CheckpointError, ConfigError, ValueError)


def run_script(main: Callable[[], Any]) -> None:
    """Run a script's ``main``; bad input ends it with one line on stderr and exit status 2, no traceback.

    Set ``LDM_TRACEBACK=1`` to see the traceback instead.
    """
    try:
        main()
    except BAD_INPUT_ERRORS as error:
        if os.environ.get("LDM_TRACEBACK"):
            raise
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)
