"""Convert Stable Diffusion v1 / 2.x between an ldm checkpoint and a diffusers ``StableDiffusionPipeline`` folder.

    python scripts/convert_diffusers.py to-diffusers --config configs/stable-diffusion/v2-inference-v.yaml \
        --ckpt v2-1_768-ema-pruned.safetensors --out sd21-diffusers
    python scripts/convert_diffusers.py to-ldm --pipeline sd21-diffusers --out sd21.safetensors --config-out sd21.yaml

Weights are carried over exactly both ways. Needs the optional ``diffusers`` package (pip install diffusers).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from omegaconf import OmegaConf

from ldm.checkpoint import PICKLE_SUFFIXES, load_state_dict_file, save_checkpoint, save_safetensors
from ldm.convert.pipeline import require_diffusers, to_diffusers, to_ldm
from ldm.sampling_cli import run_script

logger = logging.getLogger("convert_diffusers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("to-diffusers", help="ldm checkpoint + config → StableDiffusionPipeline folder")
    export.add_argument("--config", type=Path, required=True, help="the model's ldm yaml config")
    export.add_argument("--ckpt", type=Path, required=True, help="checkpoint (.ckpt or .safetensors)")
    export.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    export.add_argument("--use-ema", action="store_true", help="write the checkpoint's EMA UNet weights")
    back = commands.add_parser("to-ldm", help="StableDiffusionPipeline folder → ldm checkpoint (+ config)")
    back.add_argument("--pipeline", type=Path, required=True, help="a local StableDiffusionPipeline folder")
    back.add_argument("--out", type=Path, required=True, help="checkpoint to write (.ckpt or .safetensors)")
    back.add_argument("--config-out", type=Path, help="where to write the matching ldm yaml config")
    back.add_argument("--openclip-arch", default="ViT-H-14", help="OpenCLIP tower of an SD 2.x pipeline")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        require_diffusers()
    except ModuleNotFoundError as error:
        raise SystemExit(f"convert_diffusers.py: error: {error}") from None
    if args.command == "to-diffusers":
        state_dict = load_state_dict_file(args.ckpt, use_ema=args.use_ema)
        to_diffusers(OmegaConf.load(args.config), state_dict, args.out)
        return
    if args.out.suffix not in (".safetensors", *PICKLE_SUFFIXES):
        raise ValueError(f"--out {args.out}: use a .safetensors or .ckpt suffix to pick the format")
    state_dict, config = to_ldm(args.pipeline, args.openclip_arch)
    state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    if args.out.suffix == ".safetensors":
        save_safetensors(args.out, state_dict, {})
    else:
        save_checkpoint(args.out, state_dict)
    if args.config_out is not None:
        OmegaConf.save(config, args.config_out)
    logger.info("wrote %d tensors to %s", len(state_dict), args.out)


if __name__ == "__main__":
    run_script(main)
