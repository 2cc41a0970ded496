"""Encode a training set once with the frozen first stage (and frozen conditioner) of a LatentDiffusion config.

    python scripts/cache_latents.py --config configs/my-sd-finetune.yaml --ckpt sd-v1-4.ckpt --out cache/train \
        --fp16 --hflip
    python scripts/cache_latents.py --config configs/demo/txt2img_ldm.yaml --out cache/demo \
        model.params.first_stage_config.params.ckpt_path=logs/<stage-1 run>/checkpoints/last.ckpt

The dataset is the config's ``data.params.<--split>`` (``train`` by default), read in order. The cache is a folder
of safetensors shards (see ``ldm/data/latent_cache.py`` and docs/training_cache.md); train from it by naming
``ldm.data.latent_cache.LatentCacheDataset`` (``root: <--out>``) as the split's target, nothing else changes.
A run that stops part-way is continued by running the same command again (finished shards are kept).
Extra ``key=value`` arguments override the config (OmegaConf dot-list).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging

from omegaconf import DictConfig, OmegaConf

from ldm.cli.validation import OneLineParser, int_in, require_file
from ldm.config_file import check_complete, read_config
from ldm.data.latent_cache import bytes_per_sample, write_latent_cache
from ldm.inference import choose_device, load_model_from_config
from ldm.sampling_cli import run_script
from ldm.util import ConfigError, instantiate_from_config

logger = logging.getLogger("cache_latents")


def get_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training config with model: and data: sections")
    parser.add_argument("--ckpt", default=None,
                        help="checkpoint of the whole model (else the config's own first/cond stage ckpt_paths)")
    parser.add_argument("--out", required=True, help="cache folder (created; an unfinished one is continued)")
    parser.add_argument("--split", default="train", help="which data.params split to encode")
    parser.add_argument("--batch_size", type=int_in(1, 4096), default=16, help="images encoded at once")
    parser.add_argument("--shard_size", type=int_in(1, 1_000_000), default=1024, help="samples per shard file")
    parser.add_argument("--limit", type=int_in(1), default=None, help="encode only the first N samples")
    parser.add_argument("--fp16", action="store_true", help="store float16 (half the disk; training uses float32)")
    parser.add_argument("--hflip", action="store_true",
                        help="also store the latents of the mirrored images (for random_flip: true when training)")
    parser.add_argument("--no_cond", action="store_true", help="do not cache the conditioning, only the latents")
    parser.add_argument("--uncond_value", default=None,
                        help="input whose embedding conditioning dropout uses, as JSON (default: the config's "
                        'ucg_training val, else "" for captions)')
    parser.add_argument("--num_workers", type=int_in(0, 64), default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU) or a device")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """``(options, key=value config overrides)``."""
    parser = get_parser()
    opt, unknown = parser.parse_known_args(argv)
    bad = [arg for arg in unknown if "=" not in arg or arg.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments {bad}; config overrides are written key=value")
    return opt, unknown


def digest(config: DictConfig) -> str:
    """sha256 (16 hex digits) of a config section, so that a resumed cache comes from the same model and data."""
    text = json.dumps(OmegaConf.to_container(config, resolve=True), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def uncond_value(text: str | None) -> object:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a plain caption


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt, overrides = parse_args(argv)
    config = OmegaConf.merge(read_config(opt.config), OmegaConf.from_dotlist(overrides))
    if not isinstance(config.get("model"), DictConfig):
        raise ConfigError(f"config file {opt.config} (from --config) has no model: section; pass a training config")
    check_complete(config.model, f"config file {opt.config} (from --config), model section,")
    split = OmegaConf.select(config, f"data.params.{opt.split}")
    if split is None:
        raise ConfigError(f"config file {opt.config} has no data.params.{opt.split} dataset; pass a training config "
                          "or choose another --split")
    if opt.ckpt is not None:
        require_file(opt.ckpt, "--ckpt", "checkpoint")
    dataset = instantiate_from_config(split, name=f"data.params.{opt.split}")
    model, _ = load_model_from_config(config, opt.ckpt, choose_device(opt.device))
    source = {"model": digest(config.model), "data": digest(split), "ckpt": opt.ckpt}
    index = write_latent_cache(
        model, dataset, opt.out, batch_size=opt.batch_size, shard_size=opt.shard_size, limit=opt.limit,
        fp16=opt.fp16, hflip=opt.hflip, cache_cond=not opt.no_cond, uncond_value=uncond_value(opt.uncond_value),
        num_workers=opt.num_workers, source=source,
    )
    logger.info("%d samples, %.0f bytes per sample, in %s (cond cached: %s)", index.num_samples,
                bytes_per_sample(index, opt.out), opt.out, index.cond)


if __name__ == "__main__":
    run_script(main)
