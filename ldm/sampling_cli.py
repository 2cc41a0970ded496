"""Command-line flags that ``scripts/txt2img.py`` and ``scripts/img2img.py`` share (names and defaults of the
original Stable Diffusion scripts; the defaults that differ between the two are parameters)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldm.checkpoint import CheckpointError
from ldm.util import ConfigError

SD_CONFIG = "configs/stable-diffusion/v1-inference.yaml"
SD_CKPT = "models/ldm/stable-diffusion-v1/model.ckpt"
NO_SAFETY_CHECKER = (
    "Unlike the original txt2img script, no NSFW safety checker runs: it needs the external "
    "CompVis/stable-diffusion-safety-checker weights, so images are saved unfiltered."
)


def add_sampling_arguments(
    parser: argparse.ArgumentParser, *, outdir: str, n_iter: int, n_samples: int, scale: float, seed: int | None
) -> None:
    """Flags for prompts, output, the DDIM/PLMS sampler, latent geometry, model files and device."""
    arg = parser.add_argument
    arg("--prompt", type=str, nargs="?", default="a painting of a virus monster playing guitar",
        help="the prompt to render")
    arg("--negative_prompt", type=str, default="",
        help="the unconditional text of classifier-free guidance (the original uses the empty prompt)")
    arg("--outdir", type=str, nargs="?", default=outdir, help=f"dir to write results to (default: {outdir})")
    arg("--skip_grid", action="store_true",
        help="do not save a grid, only individual samples. Helpful when evaluating lots of samples")
    arg("--skip_save", action="store_true", help="do not save individual samples. For speed measurements.")
    arg("--ddim_steps", type=int, default=50, help="number of ddim sampling steps")
    arg("--plms", action="store_true", help="use plms sampling")
    arg("--fixed_code", action="store_true", help="if enabled, uses the same starting code across samples")
    arg("--ddim_eta", type=float, default=0.0, help="ddim eta (eta=0.0 corresponds to deterministic sampling)")
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
    arg("--use_ema", action="store_true",
        help="use the checkpoint's EMA UNet weights (model_ema.*, in full-EMA checkpoints) instead of the raw ones")
    arg("--seed", type=int, default=seed,
        help="the seed (for reproducible sampling); a random seed when omitted" if seed is None else
        "the seed (for reproducible sampling)")
    arg("--precision", type=str, choices=["full", "autocast"], default="autocast",
        help="evaluate at this precision (autocast: float16 on CUDA/MPS; the CPU always runs float32)")
    arg("--device", type=str, default="auto", help="auto (CUDA, else MPS, else CPU), or a torch device name")


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
