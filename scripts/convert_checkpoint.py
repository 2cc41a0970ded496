"""Convert a checkpoint between `.ckpt`/`.pt`/`.pth` (pickle) and `.safetensors`, keeping the original key names.

Only the state dict travels, plus the checkpoint's plain top-level values (``global_step``, ``epoch``, plain
hyper-parameters) as JSON strings in the safetensors metadata; optimizer states and callbacks are dropped.

    python scripts/convert_checkpoint.py sd-v1-4.ckpt sd-v1-4.safetensors
    python scripts/convert_checkpoint.py model.safetensors model.ckpt

A pickle that the safe loader refuses can be converted with ``--unsafe-trust-pickle``, which unpickles it with
full Python (it can run any code the file contains): do it only for files from a source you trust, ideally in a
throw-away environment, and then use the `.safetensors` output everywhere else.

Whichever way the input is read, its tensors may take at most 4x the input file's size (+ 1 MiB) once written
out (a real checkpoint stores its tensors' bytes; a tiny file describing a 1 GB broadcast tensor does not).
``--allow-large-expansion`` lifts that bound for a trusted file. Hyper-parameters are copied as stored:
interpolations such as ``${oc.env:NAME}`` stay text and are never resolved.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from ldm.checkpoint import (
    DEFAULT_MAX_EXPANSION,
    PICKLE_SUFFIXES,
    CheckpointError,
    is_safetensors,
    load_checkpoint,
    metadata_strings,
    metadata_values,
    save_checkpoint,
    save_safetensors,
    state_dict_of,
)
from ldm.checkpoint_errors import ExpansionFault, shown, shown_path
from ldm.checkpoint_guard import check_state_dict_expansion
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
    parser.add_argument(
        "--allow-large-expansion",
        action="store_true",
        help=f"accept tensors larger than {DEFAULT_MAX_EXPANSION:g}x the input file (+ 1 MiB); trusted files only",
    )
    return parser.parse_args(argv)


def _unsafe_load(path: Path) -> Any:
    logger.warning("unpickling %s with full Python (--unsafe-trust-pickle): code in the file can run", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a trusted file can still be damaged; any unpickling error is one line
        raise CheckpointError(
            f"cannot unpickle {shown_path(path)} even with --unsafe-trust-pickle ({type(error).__name__}: "
            f"{shown(error)})"
        ) from None


def read(
    path: Path, unsafe_trust_pickle: bool, max_expansion: float | None = DEFAULT_MAX_EXPANSION
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, plain metadata)`` of a checkpoint file; ``max_expansion`` as in ``load_checkpoint``."""
    if path.is_file() and is_safetensors(path):
        checkpoint = load_checkpoint(path)
        return checkpoint["state_dict"], metadata_values(checkpoint["metadata"])
    if unsafe_trust_pickle and path.is_file():
        checkpoint = _unsafe_load(path)
        if not isinstance(checkpoint, dict):
            raise CheckpointError(f"{shown_path(path)} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    else:
        checkpoint = load_checkpoint(path, max_expansion=max_expansion)
    state_dict = state_dict_of(checkpoint, path)
    try:
        check_state_dict_expansion(state_dict, path.stat().st_size, max_expansion)
    except ExpansionFault as fault:
        raise CheckpointError(
            f"refusing to convert {shown_path(path)}: {fault}; pass --allow-large-expansion if you trust the file"
        ) from None
    return state_dict, metadata_values(metadata_strings(checkpoint))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.output.suffix not in (".safetensors", *PICKLE_SUFFIXES):
        raise SystemExit(f"output {args.output}: use a .safetensors, .ckpt, .pt or .pth suffix to pick the format")
    if args.output.resolve() == args.input.resolve():
        raise SystemExit(f"output {args.output} is the input file; choose another output path")
    max_expansion = None if args.allow_large_expansion else DEFAULT_MAX_EXPANSION
    state_dict, metadata = read(args.input, args.unsafe_trust_pickle, max_expansion)
    if args.output.suffix == ".safetensors":
        save_safetensors(args.output, state_dict, metadata_strings(metadata))
    else:
        save_checkpoint(args.output, state_dict, **metadata)
    logger.info("wrote %d tensors and %s to %s", len(state_dict), sorted(metadata) or "no metadata", args.output)


if __name__ == "__main__":
    run_script(main)
