"""What the sampling scripts share: device choice, seeding, precision, model loading, sampler choice, prompts."""

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
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.models.diffusion.plms import PLMSSampler
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)

SAMPLERS = {"ddim": DDIMSampler, "plms": PLMSSampler, "dpm_solver": DPMSolverSampler}


def choose_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if available, else Apple MPS, else CPU; any other name is used as given."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int | None) -> int:
    """Seed Python, NumPy and torch (all devices); a random seed when ``seed`` is None. Returns the seed used."""
    if seed is None:
        seed = random.randint(0, 2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    logger.info("seed %d", seed)
    return seed


def precision_scope(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``autocast``: float16 autocast on CUDA/MPS; on the CPU full precision (autocast there means bfloat16, which
    is slower and changes results). ``full``: float32 everywhere."""
    if precision == "autocast" and device.type in ("cuda", "mps"):
        return torch.autocast(device.type, dtype=torch.float16)
    if precision == "autocast":
        logger.info("--precision autocast has no effect on %s; sampling in float32", device)
    return contextlib.nullcontext()


def load_model_from_config(
    config: DictConfig, ckpt: str | Path | None, device: torch.device, use_ema: bool = False
) -> tuple[torch.nn.Module, int | None]:
    """Build ``config.model``, load ``ckpt`` into it (safely; see :mod:`ldm.checkpoint`), move it to ``device``
    in eval mode. Returns ``(model, global_step of the checkpoint or None)``; ``ckpt=None`` keeps the init."""
    model = instantiate_from_config(config.model)
    global_step = None
    if ckpt is not None:
        logger.info("Loading model from %s", ckpt)
        checkpoint = load_checkpoint(ckpt, config_key="--ckpt")
        global_step = global_step_of(checkpoint)
        if global_step is not None:
            logger.info("Global Step: %d", global_step)
        report = apply_state_dict(model, state_dict_of(checkpoint, ckpt, use_ema=use_ema), what=type(model).__name__)
        if report.missing:
            logger.warning(
                "%d weights are missing from %s (e.g. %s): those layers keep their random initialisation; "
                "check that --config belongs to the checkpoint", len(report.missing), ckpt, report.missing[0]
            )
    return model.to(device).eval(), global_step


def load_eval_model(config: DictConfig, ckpt: str | Path, verbose: bool = False) -> torch.nn.Module:
    """The original scripts' ``load_model_from_config(config, ckpt, verbose=False)``: the model of
    ``config.model`` with ``ckpt``'s weights (non-strict), in eval mode on CUDA, else MPS, else the CPU.
    With ``verbose`` the missing and unexpected keys are logged in full."""
    model = instantiate_from_config(config.model)
    logger.info("Loading model from %s", ckpt)
    checkpoint = load_checkpoint(ckpt, config_key="ckpt")
    if global_step_of(checkpoint) is not None:
        logger.info("Global Step: %d", global_step_of(checkpoint))
    report = apply_state_dict(model, state_dict_of(checkpoint, ckpt), what=type(model).__name__)
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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (from {what}); check the path")
    return OmegaConf.load(path)


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


def make_sampler(name: str, model: Any) -> DDIMSampler | PLMSSampler | DPMSolverSampler:
    """The sampler named ``ddim``, ``plms`` or ``dpm_solver`` over ``model``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](model)


def prompt_batches(prompt: str, from_file: str | None, batch_size: int) -> list[list[str]]:
    """Batches of prompts: ``batch_size`` copies of ``prompt``, or the lines of ``from_file`` in batches."""
    if not from_file:
        return [batch_size * [prompt]]
    path = Path(from_file)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path} (from --from-file)")
    logger.info("reading prompts from %s", path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"prompt file {path} (from --from-file) has no prompts; write one prompt per line")
    return [list(batch) for batch in chunk(lines, batch_size)]


def text_conditioning(model: Any, prompts: list[str], negative_prompt: str, scale: float) -> tuple[Any, Any]:
    """``(c, uc)`` for classifier-free guidance: the prompts' conditioning and, unless ``scale == 1``, that of
    ``negative_prompt`` (the unconditional text, "" in the original) for each prompt."""
    uc = None if scale == 1.0 else model.get_learned_conditioning(len(prompts) * [negative_prompt])
    return model.get_learned_conditioning(prompts), uc
