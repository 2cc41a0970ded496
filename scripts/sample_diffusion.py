"""Unconditional or class-conditional sampling from a trained latent diffusion model.

    python scripts/sample_diffusion.py -r models/ldm/celeba256/model.ckpt -n 100 --batch_size 25 -c 200 -e 0
    python scripts/sample_diffusion.py -r logs/2026-01-01T00-00-00_cin/ --class 3 88 -n 8

``-r`` is a checkpoint file or a log directory. The config is ``<logdir>/config.yaml`` (released models) or the
``<logdir>/configs/*-project.yaml`` that ``main.py`` writes; the checkpoint of a directory is ``model.ckpt`` or
``checkpoints/last.ckpt``. Extra ``key=value`` arguments override the config (OmegaConf dot-list).
Images go to ``<logdir>/samples/<global_step>/<time>/img/sample_000000.png ...``, all of them as one uint8
array to ``.../numpy/<N>x<H>x<W>x3-samples.npz``, and the options to ``.../sampling_config.yaml``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import trange

from ldm.atomic_write import atomic_file
from ldm.checkpoint import global_step_of, load_checkpoint, state_dict_of
from ldm.cli.validation import OneLineParser, float_in, int_in, require_writable_dir
from ldm.config_trust import TRUST_FLAG, check_config, trusting_configs, untrusted_configs
from ldm.image_io import save_picture, to_pil, to_unit_range
from ldm.inference import (
    choose_device,
    decode_latents,
    load_config,
    make_sampler,
    optimize_for_inference,
    seed_everything,
)
from ldm.inference import load_model_from_config as load_model_and_step
from ldm.modules.encoders.modules import ClassEmbedder
from ldm.sampling_cli import run_script
from ldm.util import instantiate_from_config

logger = logging.getLogger("sample_diffusion")

#: The most samples one run draws (-n): all of them are kept for the .npz (256 x 256 x 3 bytes each).
MAX_SAMPLES = 1_000_000


def get_parser() -> argparse.ArgumentParser:
    """Options ``-r -n -e -v -l -c --batch_size``, ``--class``, ``--seed`` and ``--device``."""
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-r", "--resume", type=str, nargs="?", help="load from logdir or checkpoint in logdir")
    parser.add_argument("-n", "--n_samples", type=int_in(1, MAX_SAMPLES), nargs="?", default=50000,
                        help="number of samples to draw")
    parser.add_argument("-e", "--eta", type=float_in(0.0), nargs="?", default=1.0,
                        help="eta for ddim sampling (0.0 yields deterministic sampling)")
    parser.add_argument("-v", "--vanilla_sample", default=False, action="store_true",
                        help="vanilla (ancestral DDPM, all timesteps) sampling instead of DDIM")
    parser.add_argument("-l", "--logdir", type=str, nargs="?", default="none",
                        help="extra logdir: write under <logdir>/<name of the model's logdir> instead")
    parser.add_argument("-c", "--custom_steps", type=int_in(1, 10_000), nargs="?", default=50,
                        help="number of steps for ddim")
    parser.add_argument("--batch_size", type=int_in(1, 1024), nargs="?", default=10, help="the bs")
    parser.add_argument("--class", dest="classes", type=int_in(0), nargs="+", default=None,
                        help="class label(s) for a class-conditional model; samples cycle through them")
    parser.add_argument("--seed", type=int_in(0, 2**32 - 1), default=None, help="the seed; a random seed when omitted")
    parser.add_argument("--device", type=str, default="auto", help="auto (CUDA, else MPS, else CPU) or a device")
    parser.add_argument("--allow_partial_ckpt", action="store_true",
                        help="sample even when the checkpoint fills fewer than half of the model's tensors")
    parser.add_argument(TRUST_FLAG, dest="trust_config", action="store_true",
                        help="build the log directory's config even where it names targets outside this package's "
                        "classes (only for a model from a source you trust)")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """``(options, key=value config overrides)``; exits with a usage error for anything else."""
    parser = get_parser()
    opt, unknown = parser.parse_known_args(argv)
    if not opt.resume:
        parser.error("-r/--resume is required: a checkpoint file or a log directory")
    bad = [arg for arg in unknown if "=" not in arg or arg.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments {bad}; config overrides are written key=value")
    return opt, unknown


def custom_to_pil(x: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` in [-1, 1] → RGB image: ``uint8(255 (clamp(x, -1, 1) + 1) / 2)``."""
    return to_pil(to_unit_range(x.detach().cpu()))


def custom_to_np(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [-1, 1] → ``(B, H, W, 3)`` uint8: ``clamp((x + 1) 127.5, 0, 255)`` (ADM's format)."""
    sample = ((x.detach().cpu() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return sample.permute(0, 2, 3, 1).contiguous()


def load_model_from_config(config: DictConfig, sd: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    """Build ``config`` (a ``{target, params}`` node), load ``sd`` non-strictly (None keeps
    the initialisation), eval mode on CUDA when available."""
    model = instantiate_from_config(config)
    if sd is not None:
        model.load_state_dict(sd, strict=False)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def load_model(config: DictConfig, ckpt: str | None, gpu: bool, eval_mode: bool) -> tuple[torch.nn.Module, int | None]:
    """``(model, global_step)`` of ``config.model`` with ``ckpt``'s weights (read safely);
    ``gpu`` and ``eval_mode`` are accepted for compatibility (the model is always in eval mode)."""
    if not ckpt:
        return load_model_from_config(config.model, None), None
    checkpoint = load_checkpoint(ckpt, config_key="-r/--resume")
    return load_model_from_config(config.model, state_dict_of(checkpoint, ckpt)), global_step_of(checkpoint)


def resolve_run(resume: str) -> tuple[Path, Path]:
    """``(logdir, checkpoint)`` of ``-r``: a checkpoint file (its logdir is the folder above ``checkpoints/``)
    or a log directory holding ``model.ckpt`` or ``checkpoints/last.ckpt``."""
    path = Path(resume)
    if path.is_file():
        return (path.parent.parent if path.parent.name == "checkpoints" else path.parent), path
    if not path.is_dir():
        raise FileNotFoundError(f"cannot find {path} (from -r/--resume); pass a checkpoint file or a log directory")
    for ckpt in (path / "model.ckpt", path / "checkpoints" / "last.ckpt"):
        if ckpt.is_file():
            return path, ckpt
    raise FileNotFoundError(f"{path} (from -r/--resume) has neither model.ckpt nor checkpoints/last.ckpt")


def config_files(logdir: Path) -> list[Path]:
    """``logdir/config.yaml``, else the ``logdir/configs/*-project.yaml`` main.py wrote."""
    files = [logdir / "config.yaml"] if (logdir / "config.yaml").is_file() else sorted(
        (logdir / "configs").glob("*-project.yaml")
    )
    if not files:
        raise FileNotFoundError(f"no config.yaml or configs/*-project.yaml in {logdir}; put the model's config there")
    return files


def run_config(logdir: Path, overrides: list[str]) -> DictConfig:
    """The model's config from ``logdir`` merged with the command-line ``key=value`` overrides. The files came
    with the model: every target in them is screened first (:func:`ldm.config_trust.check_config`)."""
    configs = []
    for path in config_files(logdir):
        configs.append(load_config(path, what="-r/--resume"))
        check_config(configs[-1], path)
    return OmegaConf.merge(*configs, OmegaConf.from_dotlist(overrides))


def override_targets(overrides: list[str]) -> list[str]:
    """The ``target`` values of the ``key=value`` overrides: named by the user, so trusted."""
    pairs = [item.split("=", 1) for item in overrides]
    return [value for key, value in pairs if key.split(".")[-1] == "target"]


def check_classes(model: Any, classes: list[int] | None) -> None:
    """Raise ``ValueError`` naming the fix unless ``--class`` fits the model (none for unconditional models)."""
    embedder = model.cond_stage_model
    if embedder is None:
        if classes:
            raise ValueError("--class was given but the model is unconditional; drop --class")
        return
    if not isinstance(embedder, ClassEmbedder):
        raise ValueError(f"the model is conditioned by a {type(embedder).__name__}, not on classes; "
                         "use scripts/txt2img.py for text-conditional models")
    n_classes = embedder.embedding.num_embeddings
    if not classes:
        raise ValueError(f"the model is class-conditional ({n_classes} classes): pass --class LABEL [LABEL ...]")
    if not all(0 <= label < n_classes for label in classes):
        raise ValueError(f"--class {classes}: labels must lie in [0, {n_classes - 1}] for this model")


@torch.no_grad()
def sample_batch(model: Any, sampler: Any, opt: argparse.Namespace, batch_size: int, first: int) -> torch.Tensor:
    """Decoded samples ``(B, 3, H, W)`` (about [-1, 1]) numbered ``first ... first + B - 1`` (DDIM, or vanilla
    without a sampler); sample ``i`` of a class-conditional model gets label ``classes[i % len(classes)]``."""
    cond = None
    if opt.classes:
        labels = [opt.classes[(first + i) % len(opt.classes)] for i in range(batch_size)]
        embedder = model.cond_stage_model
        cond = model.get_learned_conditioning({embedder.key: torch.tensor(labels, device=model.device)})
    shape = (model.channels, model.image_size, model.image_size)
    with model.ema_scope("Plotting"):
        start = time.time()
        if sampler is None:
            latents = model.p_sample_loop(cond, (batch_size, *shape), verbose=False)
        else:
            latents, _ = sampler.sample(
                opt.custom_steps, batch_size=batch_size, shape=shape, conditioning=cond, eta=opt.eta, verbose=False
            )
        logger.info("Throughput for this batch: %.3f samples/s", batch_size / (time.time() - start))
    return decode_latents(model, latents).cpu()


def fresh_dir(parent: Path) -> Path:
    """A new folder ``parent/<date-time>`` (``-1``, ``-2``, ... appended when runs start in the same second)."""
    now = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    parent.mkdir(parents=True, exist_ok=True)
    for suffix in ["", *(f"-{n}" for n in range(1, 1000))]:
        try:
            (parent / f"{now}{suffix}").mkdir()
            return parent / f"{now}{suffix}"
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a fresh sample folder in {parent}")


def main(argv: list[str] | None = None) -> Path:
    """Run the sampling; returns the folder written to."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt, overrides = parse_args(argv)
    logdir, ckpt = resolve_run(opt.resume)
    source = ", ".join(str(path) for path in config_files(logdir))
    with trusting_configs(opt.trust_config), untrusted_configs(source, override_targets(overrides)):
        config = run_config(logdir, overrides)
        device = choose_device(opt.device)
        if opt.logdir == "none":
            require_writable_dir(logdir, "-r/--resume (samples go under it)")
        else:
            require_writable_dir(opt.logdir, "-l/--logdir")
        model, global_step = load_model_and_step(config, ckpt, device, allow_partial=opt.allow_partial_ckpt,
                                                 flag="-r/--resume")
    optimize_for_inference(model, fast_blocks=True)
    check_classes(model, opt.classes)
    seed_everything(opt.seed)

    if opt.logdir != "none":
        logdir = Path(opt.logdir) / logdir.resolve().name
    outdir = fresh_dir(logdir / "samples" / f"{global_step or 0:08}")
    (outdir / "img").mkdir()
    (outdir / "numpy").mkdir()
    (outdir / "sampling_config.yaml").write_text(yaml.safe_dump(vars(opt), default_flow_style=False))
    method = f"vanilla DDPM sampling with {model.num_timesteps} steps" if opt.vanilla_sample else (
        f"DDIM sampling with {opt.custom_steps} steps and eta={opt.eta}"
    )
    logger.info("Using %s; logging to %s", method, outdir)

    sampler = None if opt.vanilla_sample else make_sampler("ddim", model)
    arrays = []
    for first in trange(0, opt.n_samples, opt.batch_size, desc="Sampling Batches"):
        images = sample_batch(model, sampler, opt, min(opt.batch_size, opt.n_samples - first), first)
        for offset, image in enumerate(images):
            save_picture(custom_to_pil(image), outdir / "img" / f"sample_{first + offset:06}.png")
        arrays.append(custom_to_np(images).numpy())
    samples = np.concatenate(arrays)
    with atomic_file(outdir / "numpy" / f"{'x'.join(map(str, samples.shape))}-samples.npz") as handle:
        np.savez(handle, samples)
    logger.info("sampling of %d images finished in %s", len(samples), outdir)
    return outdir


if __name__ == "__main__":
    run_script(main)
