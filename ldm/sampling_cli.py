"""What the sampling scripts (``scripts/txt2img.py``, ``img2img.py``, ``depth2img.py``, ``upscale.py``,
``inpaint.py``) share, in the order they run: the flags (the defaults that differ are parameters), the model and
sampler ready from the flags, the loop over the prompt batches that samples, decodes and saves, and how a script
ends on bad input."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm, trange

from ldm.checkpoint import CheckpointError
from ldm.cli.validation import OneLineParser, float_in, int_in, require_file, require_writable_dir
from ldm.conditioned_sampling import hybrid_conditioning
from ldm.config_trust import TRUST_FLAG, trusting_configs, untrusted_configs
from ldm.image_io import Watermark, save_grid, save_samples, to_unit_range
from ldm.inference import (
    check_latent_geometry,
    choose_device,
    decode_latents,
    latent_factor,
    load_sampling_model,
    make_sampler,
    optimize_for_inference,
    precision_scope,
    seed_everything,
    text_conditioning,
)
from ldm.lora.files import parse_lora_spec
from ldm.lora.merge import apply_lora_files
from ldm.models.diffusion.named_samplers import SCHEDULE_ALIASES, SCHEDULES, NamedSampler, describe_samplers
from ldm.models.diffusion.sampling_common import DDIMScheduleSampler
from ldm.models.diffusion.schedule import TIMESTEP_SPACINGS
from ldm.util import ConfigError

logger = logging.getLogger(__name__)

SD_CONFIG = "configs/stable-diffusion/v1-inference.yaml"
SD_CKPT = "models/ldm/stable-diffusion-v1/model.ckpt"
#: Upper bounds of the declared ranges: steps of any sampler, images in one batch (``--n_samples``), and the
#: default ``--max_pixels`` (pixels of an init image or of ``--H`` x ``--W``; 4096 x 4096).
MAX_STEPS = 10_000
MAX_BATCH = 1024
MAX_PIXELS = 4096 * 4096
NO_SAFETY_CHECKER = (
    "No NSFW safety checker runs: it needs the external "
    "CompVis/stable-diffusion-safety-checker weights, so images are saved unfiltered."
)


class SamplingParser(OneLineParser):
    """An ``ArgumentParser`` whose errors are one line, and whose ``parse_args`` also sets ``opt.sampler`` to the
    one sampler name the flags choose (:func:`chosen_sampler`) and checks the image size against ``--max_pixels``."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        opt = super().parse_args(args, namespace)
        opt.sampler = chosen_sampler(self, opt)
        opt.config_is_default = opt.config == self.get_default("config")
        check_pixel_budget(self, opt)
        return opt


def sampling_parser(
    description: str, *, outdir: str, n_iter: int, n_samples: int, scale: float, seed: int | None,
    **other_defaults: Any,
) -> SamplingParser:
    """A sampling script's parser: ``description`` (the script's docstring) above the flags, the note that no
    safety checker runs below, the shared flags of :func:`add_sampling_arguments` with the script's defaults, and
    ``other_defaults`` replacing those of shared flags (e.g. ``config=..., f=None``)."""
    parser = SamplingParser(description=description, epilog=NO_SAFETY_CHECKER,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_arguments(parser, outdir=outdir, n_iter=n_iter, n_samples=n_samples, scale=scale, seed=seed)
    if other_defaults:
        parser.set_defaults(**other_defaults)
    return parser


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
    arg("--ddim_steps", type=int_in(1, MAX_STEPS), default=50, help="number of sampling steps (of every sampler)")
    add_sampler_arguments(parser)
    arg("--fixed_code", action="store_true", help="if enabled, uses the same starting code across samples")
    arg("--ddim_eta", type=float_in(0.0), default=None,
        help="eta, the amount of fresh noise per step: DDIM (default 0.0, deterministic) and the ancestral and SDE "
        "samplers (default 1.0); a non-zero eta for a deterministic sampler is an error")
    arg("--n_iter", type=int_in(1), default=n_iter, help="sample this often")
    arg("--C", type=int_in(1), default=4, help="latent channels")
    arg("--f", type=int_in(1), default=8, help="downsampling factor (must match the model's first stage)")
    arg("--n_samples", type=int_in(1, MAX_BATCH), default=n_samples,
        help="how many samples to produce for each given prompt. A.k.a. batch size")
    arg("--n_rows", type=int_in(0), default=0, help="images per row of the grid (default: n_samples)")
    arg("--scale", type=float_in(), default=scale,
        help="unconditional guidance scale: eps = eps(x, uncond) + scale * (eps(x, cond) - eps(x, uncond))")
    arg("--from-file", type=str, help="if specified, load prompts from this file (one per line)")
    arg("--config", type=str, default=SD_CONFIG, help="path to config which constructs model (default: %(default)s)")
    arg("--ckpt", type=str, default=SD_CKPT,
        help="path to checkpoint of model, .ckpt or .safetensors (default: %(default)s)")
    arg("--parameterization", type=str, choices=["eps", "x0", "v"], default=None,
        help="what the model predicts, replacing the config's model.params.parameterization (default: the "
        "config's; an SD 2.x checkpoint that looks like the other kind gets a warning naming the right config)")
    arg("--use_ema", action="store_true",
        help="use the checkpoint's EMA UNet weights (model_ema.*, in full-EMA checkpoints) instead of the raw ones")
    arg("--seed", type=int_in(0, 2**32 - 1), default=seed,
        help="the seed (for reproducible sampling); a random seed when omitted" if seed is None else
        "the seed (for reproducible sampling)")
    arg("--precision", type=str, choices=["full", "autocast", "bf16", "fp16"], default="autocast",
        help="evaluate at this precision: full = float32; autocast (default) = float16 autocast on CUDA/MPS, "
        "float32 on the CPU; bf16 = bfloat16 autocast on the CPU or a CUDA GPU that supports it; fp16 = float16 "
        "autocast on CUDA/MPS. The autoencoder always runs in float32 (no black images from half-precision overflow)")
    arg("--device", type=str, default="auto", help="auto (CUDA, else MPS, else CPU), or a torch device name")
    arg("--max_pixels", type=int_in(1), default=MAX_PIXELS,
        help="refuse init images and --H x --W above this many pixels (default %(default)s = 4096 x 4096); raise it "
        "for larger images if the memory is there")
    arg("--lora", type=parse_lora_spec, action="append", default=[], metavar="FILE[:WEIGHT]",
        help="merge this LoRA file (kohya / AUTOMATIC1111 .safetensors) into the model with this weight (default "
        "1.0): W += weight * (alpha / rank) * up @ down; repeat the flag for several files (see docs/lora.md)")
    arg("--allow_partial_ckpt", action="store_true",
        help="sample even when the checkpoint fills fewer than half of the model's tensors (normally an error: the "
        "checkpoint belongs to another model)")
    arg(TRUST_FLAG, dest="trust_config", action="store_true",
        help="trust the default config found in the current folder even where it names targets outside this "
        "package's classes (a --config you name is always trusted)")
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
    arg("--timestep_spacing", type=str, default="uniform", choices=list(TIMESTEP_SPACINGS),
        help="DDIM and PLMS only: which model timesteps the steps visit: uniform (default, the original "
        "1, 1 + T/S, ...), quad, or trailing (T-1, T-1-T/S, ...; for zero-terminal-SNR models, see "
        "docs/training_objectives.md)")
    arg("--guidance_rescale", type=float_in(0.0, 1.0), default=0.0, metavar="PHI",
        help="guidance rescale phi in [0, 1] (Lin et al. 2024): the guided output brought back towards the spread of "
        "the conditional one, against over-exposure at large --scale; 0 (default) = off, 0.7 as in the paper")
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


def check_pixel_budget(parser: argparse.ArgumentParser, opt: argparse.Namespace) -> None:
    """End the parser with an error when ``--H`` x ``--W`` (where the script has them) exceeds ``--max_pixels``."""
    height, width = getattr(opt, "H", None), getattr(opt, "W", None)
    if height is not None and width is not None and height * width > opt.max_pixels:
        parser.error(f"--H {height} x --W {width} is {height * width} pixels, above --max_pixels {opt.max_pixels}; "
                     "pass smaller sizes, or raise --max_pixels if the memory is there")


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
    arg("--attention_slicing", type=int_in(1), default=None, metavar="N",
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


@dataclass
class LoadedModel:
    """A sampling script's model on its device, with the ``--precision`` context and the speed options it samples
    under (see :func:`load_script_model`)."""

    model: Any
    device: torch.device
    precision: contextlib.AbstractContextManager
    speed: dict[str, Any]

    @contextlib.contextmanager
    def sampling_scope(self) -> Iterator[None]:
        """No gradients, the ``--precision`` autocast and the model's EMA weights, for everything that samples."""
        with torch.no_grad(), self.precision, self.model.ema_scope():
            yield

    def ready_sampler(self, opt: argparse.Namespace) -> NamedSampler:
        """The speed options applied to the model, the random generators seeded with ``--seed``, and the sampler
        of ``--sampler`` / ``--schedule`` over the model."""
        optimize_for_inference(self.model, **self.speed)
        seed_everything(opt.seed)
        return make_sampler(opt.sampler, self.model, schedule=opt.schedule)


def load_script_model(opt: argparse.Namespace, check: Callable[[Any], None] | None = None) -> LoadedModel:
    """The model of the flags, checked before anything is written: the ``--device``, the ``--precision`` context
    and the speed options (which fail on impossible combinations before the slow load), the model of ``--config`` /
    ``--ckpt`` (:func:`ldm.inference.load_sampling_model`) with every ``--lora`` merged in (:mod:`ldm.lora`),
    ``check(model)`` (does the script suit the model?), and ``--f`` / ``--C`` against the model's first stage (a flag
    left None means the model's own value)."""
    device = choose_device(opt.device)
    precision = precision_scope(opt.precision, device)
    speed = speed_options(opt)
    check_paths(opt)
    with trusting_configs(getattr(opt, "trust_config", False)), default_config_scope(opt):
        model = load_sampling_model(opt, device)
    apply_lora_files(model, getattr(opt, "lora", []))
    if check is not None:
        check(model)
    factor = latent_factor(model) if opt.f is None else opt.f
    check_latent_geometry(model, factor, model.channels if opt.C is None else opt.C)
    return LoadedModel(model, device, precision, speed)


def default_config_scope(opt: argparse.Namespace) -> contextlib.AbstractContextManager:
    """A ``--config`` the user named is trusted; one left at the script's default (a path found in the current
    folder, not named) has its targets screened as a config that came with a model (:mod:`ldm.config_trust`)."""
    if getattr(opt, "config_is_default", False):
        return untrusted_configs(opt.config)
    return contextlib.nullcontext()


def check_paths(opt: argparse.Namespace) -> None:
    """Before the slow load: ``--config``, ``--ckpt`` (when given) and every ``--lora`` are readable files and
    ``--outdir`` is, or can become, a folder we may write in; each failure names the flag and the fix."""
    require_file(opt.config, "--config", "config file")
    if opt.ckpt is not None:
        require_file(opt.ckpt, "--ckpt", "checkpoint")
    for spec in getattr(opt, "lora", []):
        require_file(spec.path, "--lora", "LoRA file")
    require_writable_dir(opt.outdir, "--outdir")


@dataclass
class SamplingStart:
    """Where each batch of B prompts starts and which images condition it; every tensor has ``--n_samples`` rows
    and a batch takes its first B.

    Without ``init_latent``: sampled from x_T = ``noise[:B]`` ``(B, *shape)`` (fresh noise when ``noise`` is None).
    With ``init_latent`` ``(n, C, h, w)``: img2img from ``init_latent[:B]`` noised to ``--strength`` with
    ``noise[:B]``. ``c_concat`` ``(n, C_c, h, w)`` (and ``c_adm`` ``(n,)``) join the text as hybrid conditioning
    dicts, the same for the conditional and unconditional branch.
    """

    shape: tuple[int, ...] | None = None
    init_latent: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    c_concat: torch.Tensor | None = None
    c_adm: torch.Tensor | None = None

    def draw(self, opt: argparse.Namespace, sampler: NamedSampler, c: Any, uc: Any, batch: int) -> torch.Tensor:
        """Latents ``(B, C, h, w)`` for the text conditioning ``c`` / ``uc`` of B prompts, guided with ``--scale``
        (eps = eps(x, uc) + scale (eps(x, c) − eps(x, uc))), ``--ddim_steps`` steps, ``--ddim_eta``."""
        if self.c_concat is not None:
            c_adm = None if self.c_adm is None else self.c_adm[:batch]
            c, uc = hybrid_conditioning(self.c_concat[:batch], c, uc, c_adm=c_adm)
        noise = None if self.noise is None else self.noise[:batch]
        guidance = {"unconditional_guidance_scale": opt.scale, "unconditional_conditioning": uc, "eta": opt.ddim_eta,
                    "guidance_rescale": getattr(opt, "guidance_rescale", 0.0)}
        spacing = spacing_options(opt, sampler)
        if self.init_latent is not None:
            return sampler.img2img(self.init_latent[:batch], opt.strength, opt.ddim_steps, c, noise=noise, **guidance,
                                   **spacing)
        if self.shape is None:
            raise ValueError("SamplingStart needs a latent shape (C, h, w) to sample from noise, or an init_latent")
        latents, _ = sampler.sample(S=opt.ddim_steps, conditioning=c, batch_size=batch, shape=self.shape,
                                    verbose=False, x_T=noise, **guidance, **spacing)
        return latents


def spacing_options(opt: argparse.Namespace, sampler: NamedSampler) -> dict[str, Any]:
    """The ``sample`` / ``img2img`` keywords of ``--timestep_spacing``: none for ``uniform`` (the original call),
    else ``sampler_options={"timestep_spacing": ...}``; ``ValueError`` naming the fix where the sampler cannot
    space its steps so."""
    spacing = getattr(opt, "timestep_spacing", "uniform")
    if spacing == "uniform":
        return {}
    if not isinstance(getattr(sampler, "legacy", None), DDIMScheduleSampler):
        raise ValueError(f"--timestep_spacing {spacing} works with --sampler ddim or plms only; drop it for "
                         f"{opt.sampler!r} (the k-diffusion samplers take --schedule)")
    return {"sampler_options": {"timestep_spacing": spacing}}


class SampleWriter:
    """Where a script's images go: each batch as ``outdir/samples/00000.png, ...`` (numbered after the files
    already there; not with ``--skip_save``) and all of them as one ``outdir/grid-0000.png`` at the end
    (``--n_rows`` per row, default ``--n_samples``; not with ``--skip_grid``), watermarked when ``watermark`` is
    given. Creating it creates the folders; :func:`sample_prompts` makes one."""

    def __init__(self, opt: argparse.Namespace, watermark: Watermark | None = None) -> None:
        self.outdir = Path(opt.outdir)
        self.sample_dir = self.outdir / "samples"
        self.sample_dir.mkdir(parents=True, exist_ok=True)
        self.watermark = watermark
        self.save, self.grid = not opt.skip_save, not opt.skip_grid
        self.n_rows = opt.n_rows or opt.n_samples
        self.kept: list[torch.Tensor] = []

    def add(self, images: torch.Tensor) -> None:
        """Save a batch ``(B, 3, H, W)`` in [0, 1] (and keep it on the CPU for the grid)."""
        images = images.cpu()
        if self.save:
            save_samples(images, self.sample_dir, self.watermark)
        if self.grid:
            self.kept.append(images)

    def finish(self) -> Path:
        """Save the grid; returns ``outdir``."""
        if self.grid:
            save_grid(self.kept, self.outdir, self.n_rows, self.watermark)
        logger.info("Your samples are ready and waiting for you here: %s", self.outdir)
        return self.outdir


def sample_prompts(opt: argparse.Namespace, model: Any, sampler: NamedSampler, batches: list[list[str]],
                   start: SamplingStart, watermark: Watermark | None = None) -> Path:
    """``--n_iter`` passes over the prompt batches: per batch, c (and uc, of ``--negative_prompt``, unless
    ``--scale`` is 1) of the prompts, latents drawn from ``start``, decoded to x = D(z / scale_factor) in float32,
    mapped to [0, 1] by clamp((x + 1) / 2) and saved by a :class:`SampleWriter`. Runs inside the caller's
    :meth:`LoadedModel.sampling_scope`; returns ``--outdir``."""
    writer = SampleWriter(opt, watermark)
    for _ in trange(opt.n_iter, desc="Sampling"):
        for prompts in tqdm(batches, desc="data"):
            c, uc = text_conditioning(model, prompts, opt.negative_prompt, opt.scale)
            latents = start.draw(opt, sampler, c, uc, len(prompts))
            writer.add(to_unit_range(decode_latents(model, latents)))
    return writer.finish()


#: Errors that mean bad input (a path, a file, a size, a setting) rather than a bug: a script reports them as one line.
BAD_INPUT_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, CheckpointError,
                    ConfigError, ValueError)
#: Failures while running (a full disk, memory, the device): one line and exit status 1.
RUNTIME_ERRORS = (OSError, MemoryError, RuntimeError)


def run_script(main: Callable[[], Any]) -> None:
    """Run a script's ``main``; bad input ends it with one line on stderr and exit status 2, a failure while running
    (disk, memory, device) with one line and exit status 1; no traceback.

    Set ``LDM_TRACEBACK=1`` to see the traceback instead.
    """
    try:
        main()
    except (*BAD_INPUT_ERRORS, *RUNTIME_ERRORS) as error:
        if os.environ.get("LDM_TRACEBACK"):
            raise
        bad_input = isinstance(error, BAD_INPUT_ERRORS)
        text = " ".join(str(error).split()) or type(error).__name__
        hint = "" if bad_input else f" ({type(error).__name__}; LDM_TRACEBACK=1 shows where)"
        print(f"{Path(sys.argv[0]).name}: error: {text}{hint}", file=sys.stderr)
        sys.exit(2 if bad_input else 1)
