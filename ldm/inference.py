"""What the sampling scripts share: device choice, seeding, precision, model loading, speed options, sampler choice,
prompts."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ldm.checkpoint import apply_state_dict, global_step_of, load_checkpoint, state_dict_of
from ldm.cli.validation import require_file
from ldm.config_file import check_complete, read_config
from ldm.models.diffusion.named_samplers import SAMPLERS as SAMPLERS  # the sampler table, by display name
from ldm.models.diffusion.named_samplers import NamedSampler, resolve_sampler
from ldm.models.vae_tiling import set_vae_tiling
from ldm.modules.attention import SpatialTransformer
from ldm.modules.attention_slicing import set_attention_slicing
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.fast.blocks import swap_fast_blocks
from ldm.modules.fast.packed_conv import pack_convolutions
from ldm.prediction_check import warn_on_parameterization_mismatch
from ldm.util import ConfigError, instantiate_from_config
from ldm.weights_match import check_enough_loaded

logger = logging.getLogger(__name__)


def choose_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if available, else Apple MPS, else CPU; any other name is used as given, after checking that
    it names a device this machine has (``ValueError`` naming the fix otherwise)."""
    if name != "auto":
        return _existing_device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _existing_device(name: str) -> torch.device:
    """``torch.device(name)`` if this machine has it; ``ValueError`` naming the devices to use instead."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device name; pass auto, cpu, cuda, cuda:0 or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA GPU is available here; pass --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; "
                             "pass one of those")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: Apple MPS is not available here; pass --device cpu (or auto)")
    return device


def seed_everything(seed: int | None) -> int:
    """Seed Python, NumPy and torch (all devices); a random seed when ``seed`` is None. Returns the seed used."""
    if seed is None:
        seed = random.randint(0, 2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    logger.info("seed %d", seed)
    return seed


#: The ``--precision`` choices: float32, ``autocast`` (float16 on CUDA/MPS), explicit bfloat16/float16 autocast.
PRECISIONS = ("full", "autocast", "bf16", "fp16")


def precision_scope(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context sampling runs in.

    ``full``: float32 everywhere. ``autocast``: float16 autocast on CUDA/MPS; float32 on the CPU.
    ``bf16``: bfloat16 autocast on the CPU or a CUDA GPU with bfloat16 support.
    ``fp16``: float16 autocast on CUDA/MPS. Raises ``ValueError`` naming the fix where a choice is unsupported.
    """
    kind = device.type
    if precision == "full":
        return contextlib.nullcontext()
    if precision == "autocast":
        if kind in ("cuda", "mps"):
            return torch.autocast(kind, dtype=torch.float16)
        logger.info("--precision autocast has no effect on %s; sampling in float32 (--precision bf16 for bfloat16)",
                    device)
        return contextlib.nullcontext()
    if precision == "bf16":
        if kind == "cpu" or (kind == "cuda" and torch.cuda.is_bf16_supported()):
            return torch.autocast(kind, dtype=torch.bfloat16)
        fix = "--precision fp16" if kind in ("cuda", "mps") else "--precision full"
        raise ValueError(f"--precision bf16 is not supported on {device} (bfloat16 autocast needs the CPU or a CUDA "
                         f"GPU with bfloat16 support); use {fix}")
    if precision == "fp16":
        if kind in ("cuda", "mps"):
            return torch.autocast(kind, dtype=torch.float16)
        fix = "--precision bf16" if kind == "cpu" else "--precision full"
        raise ValueError(f"--precision fp16 needs a CUDA or MPS device, not {device}; use {fix}")
    raise ValueError(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def _float32_scope(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on ``device`` (where autocast exists at all)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def decode_latents(model: Any, z: torch.Tensor) -> torch.Tensor:
    """x = D(z / scale_factor) ``(B, C, h, w) -> (B, 3, H, W)`` in float32 with autocast off, whatever the sampling
    precision: a half-precision decoder overflows to inf/NaN (black images)."""
    with _float32_scope(z.device):
        return model.decode_first_stage(z.float())


def encode_latents(model: Any, x: torch.Tensor) -> torch.Tensor:
    """z = scale_factor · E(x) ``(B, 3, H, W) -> (B, C, h, w)`` in float32 with autocast off (the same overflow)."""
    with _float32_scope(x.device):
        return model.get_first_stage_encoding(model.encode_first_stage(x.float()))


def load_model_from_config(
    config: DictConfig, ckpt: str | Path | None, device: torch.device, use_ema: bool = False,
    allow_partial: bool = False, flag: str = "--ckpt",
) -> tuple[torch.nn.Module, int | None]:
    """Build ``config.model``, load ``ckpt`` into it (safely; see :mod:`ldm.checkpoint`), move it to ``device``
    in eval mode. Returns ``(model, global_step of the checkpoint or None)``; ``ckpt=None`` keeps the init.
    A checkpoint that fills fewer than half of the model's tensors raises ``ValueError`` naming what it looks like,
    unless ``allow_partial`` (``--allow_partial_ckpt``; see :func:`ldm.weights_match.check_enough_loaded`)."""
    model = instantiate_from_config(config.model)
    global_step = None
    if ckpt is not None:
        logger.info("Loading model from %s", ckpt)
        checkpoint = load_checkpoint(ckpt, config_key="--ckpt")
        global_step = global_step_of(checkpoint)
        if global_step is not None:
            logger.info("Global Step: %d", global_step)
        state_dict = state_dict_of(checkpoint, ckpt, use_ema=use_ema)
        report = apply_state_dict(model, state_dict, what=type(model).__name__)
        check_enough_loaded(model, report, state_dict, f"{ckpt} (from {flag})", allow_partial)
        if report.missing:
            logger.warning(
                "%d weights are missing from %s (e.g. %s): those layers keep their random initialisation; "
                "check that --config belongs to the checkpoint", len(report.missing), ckpt, report.missing[0]
            )
    return model.to(device).eval(), global_step


def load_sampling_model(opt: Any, device: torch.device) -> torch.nn.Module:
    """The model of the sampling scripts' ``--config`` / ``--ckpt`` / ``--use_ema`` / ``--parameterization`` on
    ``device``. ``--parameterization`` replaces the config's; without it, an SD 2.x checkpoint whose outputs
    contradict the config (768-v under ``v2-inference.yaml``, or the reverse) gets a warning naming the right config
    (:mod:`ldm.prediction_check`). ``--precision full`` keeps UNets whose config says ``use_fp16`` / ``use_bf16``
    (the SD 2.x configs) in float32 on CUDA too."""
    config = load_config(opt.config)
    forced = getattr(opt, "parameterization", None)
    if forced is not None:
        OmegaConf.update(config, "model.params.parameterization", forced, force_add=True)
    model, _ = load_model_from_config(config, opt.ckpt, device, use_ema=opt.use_ema,
                                      allow_partial=getattr(opt, "allow_partial_ckpt", False))
    if forced is None and opt.ckpt is not None:
        with model.ema_scope():
            warn_on_parameterization_mismatch(model, opt.ckpt, opt.config)
    if getattr(opt, "precision", None) == "full":
        compute_unets_in_float32(model)
    return model


def compute_unets_in_float32(model: torch.nn.Module) -> None:
    """Every ``UNetModel`` in ``model`` computes in float32, whatever its config's ``use_fp16`` / ``use_bf16``
    (those make a float32 UNet autocast to half precision on CUDA)."""
    for module in model.modules():
        if isinstance(module, UNetModel):
            module.dtype = torch.float32


def load_eval_model(
    config: DictConfig, ckpt: str | Path, verbose: bool = False, allow_partial: bool = False
) -> torch.nn.Module:
    """``load_model_from_config(config, ckpt, verbose=False)`` of the sampling scripts' interface: the model of
    ``config.model`` with ``ckpt``'s weights (non-strict), in eval mode on CUDA, else MPS, else the CPU.
    With ``verbose`` the missing and unexpected keys are logged in full. A checkpoint that fills fewer than half
    of the model's tensors (another model's file) raises ``ValueError`` unless ``allow_partial``."""
    model = instantiate_from_config(config.model)
    logger.info("Loading model from %s", ckpt)
    checkpoint = load_checkpoint(ckpt, config_key="ckpt")
    if global_step_of(checkpoint) is not None:
        logger.info("Global Step: %d", global_step_of(checkpoint))
    state_dict = state_dict_of(checkpoint, ckpt)
    report = apply_state_dict(model, state_dict, what=type(model).__name__)
    check_enough_loaded(model, report, state_dict, str(ckpt), allow_partial)
    if verbose and report.missing:
        logger.info("missing keys:\n%s", report.missing)
    if verbose and report.unexpected:
        logger.info("unexpected keys:\n%s", report.unexpected)
    return model.to(choose_device()).eval()


def chunk(it: Iterable[Any], size: int) -> Iterator[tuple[Any, ...]]:
    """Consecutive tuples of ``size`` items of ``it`` (the last one shorter)."""
    iterator = iter(it)
    return iter(lambda: tuple(islice(iterator, size)), ())


def load_config(path: str | Path, what: str = "--config") -> DictConfig:
    """The YAML config at ``path`` (named by the flag ``what``), its ``model:`` section complete (no ``???`` left,
    interpolations that resolve; a training config's unset data roots do not matter for sampling); every problem
    is one ``ConfigError`` / ``FileNotFoundError`` line (:mod:`ldm.config_file`)."""
    config = read_config(path, what)
    if not isinstance(config.get("model"), DictConfig):
        raise ConfigError(f"config file {path} (from {what}) has no model: section (a mapping with target and "
                          "params); pass the model's inference config")
    check_complete(config.model, f"config file {path} (from {what}), model section,")  # data: is not used here
    return config


def latent_factor(model: Any) -> int:
    """Pixels per latent pixel: ``2 ** (num_resolutions - 1)`` of the first stage's encoder (1 without one)."""
    encoder = getattr(getattr(model, "first_stage_model", None), "encoder", None)
    return 2 ** (getattr(encoder, "num_resolutions", 1) - 1)


def pixel_multiple(model: Any) -> int:
    """What image sides must be multiples of: the latent factor times the UNet's ``2 ** (len(channel_mult) - 1)``
    (each UNet level halves the latent and the decoder path must meet the same sizes again)."""
    unet = model.model.diffusion_model
    return latent_factor(model) * 2 ** (len(getattr(unet, "channel_mult", (1,))) - 1)


def check_image_size(height: int, width: int, multiple: int, why: str = "--f") -> None:
    """Raise ``ValueError`` naming the fix unless ``--H`` and ``--W`` are positive multiples of ``multiple``."""
    for name, size in (("--H", height), ("--W", width)):
        if size <= 0 or size % multiple:
            lower, upper = max(multiple, size - size % multiple), size - size % multiple + multiple
            raise ValueError(
                f"{name} {size} is not a multiple of {multiple} ({why}); use {name} {lower} or {name} {upper}"
            )


def check_latent_geometry(model: Any, factor: int, channels: int) -> None:
    """Raise ``ValueError`` naming the fix when ``--f``/``--C`` do not match the loaded model."""
    if factor != latent_factor(model):
        raise ValueError(
            f"--f {factor} does not match the model's first stage, which downsamples by {latent_factor(model)}; "
            f"pass --f {latent_factor(model)}"
        )
    if channels != model.channels:
        raise ValueError(
            f"--C {channels} does not match the model's {model.channels} latent channels; pass --C {model.channels}"
        )


def make_sampler(name: str, model: Any, schedule: str | None = None) -> NamedSampler:
    """The sampler called ``name`` over ``model``: a name of :data:`SAMPLERS` (``"DPM++ 2M"``, ``"Euler a"``,
    ``"DDIM"``, ...) or its alias (``dpmpp_2m``, ``euler_a``, ``ddim``, ``plms``, ``dpm_solver``), case-insensitive,
    optionally with a schedule suffix (``"DPM++ 2M Karras"``) or ``schedule``. Every one answers the DDIM sampler's
    ``sample(S, batch_size, shape, ...)`` and ``img2img(x0, strength, S, ...)``; an unknown name raises
    ``ValueError`` naming the closest."""
    resolve_sampler(name)
    return NamedSampler(model, name, schedule=schedule)


#: The ``torch.compile`` backend of ``--compile``.
COMPILE_BACKEND = "inductor"
#: The latent tile side of ``--vae_tiling`` (512 pixels with Stable Diffusion's f=8 autoencoder).
VAE_TILE = 64


def _commit_ema_weights(model: Any) -> None:
    """Copy a model's EMA weights into its UNet for good and free the EMA copy (sampling uses the EMA weights
    anyway; a packed conv has no dense weight left to swap them into, and the copy costs the UNet's size again)."""
    if getattr(model, "use_ema", False):
        with torch.no_grad():
            model.model_ema.copy_to(model.model)
        del model.model_ema
        model.use_ema = False


def _swap_fast_autoencoder(first_stage: torch.nn.Module | None) -> int:
    """The autoencoder's inference modules (``ldm.modules.fast.autoencoder``) in place of its reference ones."""
    if first_stage is None:
        return 0
    try:
        from ldm.modules.fast.autoencoder import swap_fast_autoencoder
    except ImportError:
        logger.info("no fast autoencoder modules in this version; the first stage keeps its reference blocks")
        return 0
    return swap_fast_autoencoder(first_stage)


def _check_speed_options(unet: torch.nn.Module, prepack: bool, compile: bool, attention_slicing: int | None) -> None:
    device = next(unet.parameters()).device if prepack else None
    problems = (
        (prepack and compile, "--prepack and --compile exclude each other (packed convolutions defeat the "
         "compiler, which packs weights itself); drop one"),
        (prepack and device.type != "cpu", f"--prepack packs convolutions for oneDNN on the CPU, but the model is on "
         f"{device}; drop --prepack or pass --device cpu"),
        (attention_slicing is not None and attention_slicing < 1, f"--attention_slicing {attention_slicing}: the "
         "slice size must be a positive number of query rows; pass e.g. --attention_slicing 1024, or drop the flag"),
    )
    for failed, message in problems:
        if failed:
            raise ValueError(message)


def optimize_for_inference(
    model: Any,
    *,
    fast_blocks: bool = False,
    channels_last: bool = False,
    prepack: bool = False,
    compile: bool = False,
    attention_slicing: int | None = None,
    vae_tiling: bool = False,
) -> None:
    """Apply the sampling scripts' speed options to a ``LatentDiffusion`` in place; all off leaves it untouched.
    Every option except ``attention_slicing``/``vae_tiling`` makes the model inference-only (no gradients).

    ``fast_blocks``: the inference variants of ``ldm.modules.fast`` swapped in for the reference blocks, sharing
    their weights (the UNet's gated feed-forwards and the first stage's blocks; not the
    UNet's under ``compile``, whose compiler fuses them itself); equal within float rounding. ``channels_last``:
    the UNet in channels-last memory format (same numbers). ``prepack`` (CPU, float32 only): the UNet
    channels-last with its convolutions outside the spatial transformers pre-packed for oneDNN and its upsampling
    convs fused with the nearest x2 upsampling (equal within float rounding). ``fast_blocks`` and ``prepack`` first
    copy the EMA weights in for good, if the model keeps any (sampling uses them anyway), and free the EMA copy.
    ``compile``: ``torch.compile`` of the UNet's forward (the first step compiles). ``attention_slicing``: the
    attention layers compute at most that many query rows at a time. ``vae_tiling``: the first stage decodes in
    tiles of ``VAE_TILE`` latent pixels.
    """
    unet = model.model.diffusion_model
    _check_speed_options(unet, prepack, compile, attention_slicing)
    if fast_blocks or prepack:
        _commit_ema_weights(model)
    if fast_blocks:
        swapped = _swap_fast_autoencoder(getattr(model, "first_stage_model", None))
        if not compile:
            swapped += swap_fast_blocks(unet)
        logger.info("fast blocks: %d inference modules swapped in", swapped)
    if prepack:
        packed = pack_convolutions(unet, skip=(SpatialTransformer,))
        logger.info("prepack: %d convolutions packed for oneDNN", packed)
    if channels_last or prepack:
        unet.to(memory_format=torch.channels_last)
    if attention_slicing is not None:
        sliced = set_attention_slicing(model, attention_slicing)
        logger.info("attention slicing: %d attention layers compute %d query rows at a time", sliced,
                    attention_slicing)
    if vae_tiling:
        set_vae_tiling(model.first_stage_model, VAE_TILE)
        logger.info("VAE tiling: the first stage decodes in tiles of %d latent pixels", VAE_TILE)
    if compile:
        logger.info("torch.compile (%s) of the UNet: the first sampling step compiles and takes longer",
                    COMPILE_BACKEND)
        unet.compile(backend=COMPILE_BACKEND)


def prompt_batches(prompt: str, from_file: str | None, batch_size: int) -> list[list[str]]:
    """Batches of prompts: ``batch_size`` copies of ``prompt``, or the lines of ``from_file`` in batches."""
    if not from_file:
        return [batch_size * [prompt]]
    path = require_file(from_file, "--from-file", "prompt file")
    logger.info("reading prompts from %s", path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"prompt file {path} (from --from-file) is not UTF-8 text (byte "
                         f"{error.object[error.start]:#04x} at offset {error.start}); save it as UTF-8") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"prompt file {path} (from --from-file) has no prompts; write one prompt per line")
    return [list(batch) for batch in chunk(lines, batch_size)]


def text_conditioning(model: Any, prompts: list[str], negative_prompt: str, scale: float) -> tuple[Any, Any]:
    """``(c, uc)`` for classifier-free guidance: the prompts' conditioning and, unless ``scale == 1``, that of
    ``negative_prompt`` (the unconditional text, "" by default) for each prompt."""
    uc = None if scale == 1.0 else model.get_learned_conditioning(len(prompts) * [negative_prompt])
    return model.get_learned_conditioning(prompts), uc
