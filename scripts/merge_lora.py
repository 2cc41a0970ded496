"""Merge LoRA files into a checkpoint: every adapted weight becomes W + m · (α / r) · U D, the keys stay the same.

    python scripts/merge_lora.py --config configs/stable-diffusion/v1-inference.yaml \\
        --ckpt models/ldm/stable-diffusion-v1/model.ckpt --lora style.safetensors:0.8 --lora detail.safetensors \\
        --out merged.safetensors

``--config`` describes the checkpoint's model (its layer names are read from it, built on the meta device); the
LoRA files are kohya / AUTOMATIC1111 ``.safetensors`` (docs/lora.md). The output's suffix picks the format
(``.safetensors`` or ``.ckpt``); it is written atomically, with the input's plain metadata (``global_step``, ...)
and the list of merged files. Sampling the output equals sampling the input with the same ``--lora`` flags.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ldm.checkpoint import (  # noqa: E402
    PICKLE_SUFFIXES,
    load_checkpoint,
    metadata_strings,
    metadata_values,
    save_checkpoint,
    save_safetensors,
    state_dict_of,
)
from ldm.cli.validation import OneLineParser, require_file  # noqa: E402
from ldm.config_file import read_config  # noqa: E402
from ldm.lora.checkpoint_merge import architecture, merge_into_state_dict, merged_metadata  # noqa: E402
from ldm.lora.files import parse_lora_spec, read_lora  # noqa: E402
from ldm.sampling_cli import run_script  # noqa: E402

logger = logging.getLogger("merge_lora")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config of the checkpoint's model (its model: section)")
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint to merge into (.ckpt or .safetensors)")
    parser.add_argument("--lora", required=True, type=parse_lora_spec, action="append", metavar="FILE[:WEIGHT]",
                        help="a LoRA file and its weight (default 1.0); repeat for several, merged in order")
    parser.add_argument("--out", required=True, type=Path, help="the merged checkpoint (.safetensors or .ckpt)")
    opt = parser.parse_args(argv)
    if opt.out.suffix not in (".safetensors", *PICKLE_SUFFIXES):
        parser.error(f"--out {opt.out}: use a .safetensors or .ckpt suffix to pick the format")
    if opt.out.resolve() == opt.ckpt.resolve():
        parser.error(f"--out {opt.out} is the input checkpoint; choose another path")
    return opt


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_args(argv)
    require_file(opt.config, "--config", "config file")
    require_file(opt.ckpt, "--ckpt", "checkpoint")
    for spec in opt.lora:
        require_file(spec.path, "--lora", "LoRA file")
    model = architecture(read_config(opt.config, "--config"))
    checkpoint = load_checkpoint(opt.ckpt, config_key="--ckpt")
    state_dict = state_dict_of(checkpoint, opt.ckpt)
    metadata = metadata_values(checkpoint["metadata"]) if "metadata" in checkpoint else metadata_values(
        metadata_strings(checkpoint))
    for spec in opt.lora:
        count = merge_into_state_dict(state_dict, model, read_lora(spec.path), spec.weight)
        logger.info("merged %s (weight %g) into %d layers", spec.path, spec.weight, count)
    metadata = merged_metadata(metadata, [(str(spec.path), spec.weight) for spec in opt.lora])
    if opt.out.suffix == ".safetensors":
        save_safetensors(opt.out, state_dict, metadata_strings(metadata))
    else:
        save_checkpoint(opt.out, state_dict, **metadata)
    logger.info("wrote %d tensors to %s", len(state_dict), opt.out)
    return opt.out


if __name__ == "__main__":
    run_script(main)
