"""Convert a checkpoint between `.ckpt`/`.pt`/`.pth` (pickle) and `.safetensors`, keeping the original key names.

Only the state dict travels, plus the checkpoint's plain top-level values (``global_step``, ``epoch``, plain
hyper-parameters) as JSON strings in the safetensors metadata; optimizer states and callbacks are dropped.

    python scripts/convert_checkpoint.py sd-v1-4.ckpt sd-v1-4.safetensors
    python scripts/convert_checkpoint.py model.safetensors model.ckpt

A pickle that the safe loader refuses can be converted with ``--unsafe-trust-pickle``, which unpickles it with
full Python (it can run any code the file contains): do it only for files from a source you trust, ideally in a
throw-away environment, and then use the `.safetensors` output everywhere else.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from ldm.checkpoint import (
    PICKLE_SUFFIXES,
    is_safetensors,
    load_checkpoint,
    metadata_strings,
    metadata_values,
    save_checkpoint,
    save_safetensors,
    state_dict_of,
)
from ldm.sampling_cli import run_script

logger = logging.getLogger("convert_checkpoint")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="checkpoint to read (.ckpt/.pt/.pth or .safetensors)")
    parser.add_argument("output", type=Path, help="file to write; its suffix picks the format")
    parser.add_argument(
        "--unsafe-trust-pickle",
        action="store_true",
        help="read the input pickle with full Python unpickling (runs code inside the file; trusted files only)",
    )
    return parser.parse_args(argv)


def read(path: Path, unsafe_trust_pickle: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, plain metadata)`` of a checkpoint file."""
    if path.is_file() and is_safetensors(path):
        checkpoint = load_checkpoint(path)
        return checkpoint["state_dict"], metadata_values(checkpoint["metadata"])
    if unsafe_trust_pickle:
        logger.warning("unpickling %s with full Python (--unsafe-trust-pickle): code in the file can run", path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    else:
        checkpoint = load_checkpoint(path)
    return state_dict_of(checkpoint, path), metadata_values(metadata_strings(checkpoint))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.output.suffix not in (".safetensors", *PICKLE_SUFFIXES):
        raise SystemExit(f"output {args.output}: use a .safetensors, .ckpt, .pt or .pth suffix to pick the format")
    if args.output.resolve() == args.input.resolve():
        raise SystemExit(f"output {args.output} is the input file; choose another output path")
    state_dict, metadata = read(args.input, args.unsafe_trust_pickle)
    if args.output.suffix == ".safetensors":
        save_safetensors(args.output, state_dict, metadata_strings(metadata))
    else:
        save_checkpoint(args.output, state_dict, **metadata)
    logger.info("wrote %d tensors and %s to %s", len(state_dict), sorted(metadata) or "no metadata", args.output)


if __name__ == "__main__":
    run_script(main)
