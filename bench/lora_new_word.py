"""A LoRA teaches the demo model a colour word it never saw; the old prompts must keep their figures.

    python -m bench.lora_new_word --stage2-run logs/<demo stage-2 run>      # configs/demo/txt2img_ldm_lora.yaml
    python -m bench.lora_new_word --decoded-colours logs/<demo stage-1 run>  # which colours stage 1 can draw

The demo's stage-2 model (``configs/demo/txt2img_ldm.yaml``) is fine-tuned with ``configs/demo/txt2img_ldm_lora.yaml``
(rank-8 adapters on the attention projections of the UNet and the text encoder; the weights stay frozen) on
captions of which half use the new word ``--word`` for the colour ``--colour`` (the word never occurs in the demo
data, so its token embedding is untrained) and half the five known colours. Then the base model and the base model
with the LoRA merged (``ldm.lora.merge.apply_lora_files``, what ``--lora`` does in the scripts) sample the same
prompts from the same noise: ``--samples`` prompts with the new word (every kind, sizes and positions cycling) and
the demo's 15 kind x colour prompts ``--per-prompt`` times each; the independent checker
(:mod:`ldm.data.shapes_checker`) reads what each image shows. The table goes to ``<outdir>/lora_new_word.md`` and
``.json``; docs/lora.md quotes a measured one.

Why a word for a colour the autoencoder can draw: the demo's stage-1 autoencoder, trained on five colours, decodes
every other colour as one of them (measured for ten colours in docs/lora.md), so a new *visual* colour would need
the first stage fine-tuned too; a stage-2 LoRA can teach a new word, not a new pixel colour.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ldm.data.shapes import COLORS, KINDS, POSITIONS, SIZES, ShapesDataset, ShapeSpec  # noqa: E402
from ldm.data.shapes_checker import attribute_accuracy  # noqa: E402
from ldm.evaluation.demo_metrics import prompt_specs  # noqa: E402
from ldm.inference import load_model_from_config, seed_everything  # noqa: E402
from ldm.lora.files import LoraSpec  # noqa: E402
from ldm.lora.merge import apply_lora_files  # noqa: E402
from ldm.models.diffusion.ddim import DDIMSampler  # noqa: E402

LORA_CONFIG = ROOT / "configs/demo/txt2img_ldm_lora.yaml"
#: Colours the demo data never draws, for :func:`decoded_colours`.
NEW_COLOURS = {"orange": (250, 120, 20), "cyan": (40, 200, 210), "pink": (240, 130, 200), "lime": (160, 230, 40),
               "magenta": (220, 40, 220), "brown": (130, 80, 30), "grey": (128, 128, 128)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage2-run", type=Path, default=None, help="a demo stage-2 run (checkpoints/last.ckpt)")
    parser.add_argument("--decoded-colours", type=Path, default=None, metavar="STAGE1_RUN",
                        help="instead: encode and decode shapes of colours the demo never draws with this stage-1 "
                        "run and say what comes out")
    parser.add_argument("--lora-run", type=Path, default=None, help="reuse this LoRA run instead of training one")
    parser.add_argument("--word", default="scarlet", help="the new colour word of the LoRA config's data")
    parser.add_argument("--colour", default="red", choices=list(COLORS), help="the colour the word names")
    parser.add_argument("--samples", type=int, default=60, help="samples of new-word prompts")
    parser.add_argument("--per-prompt", type=int, default=4, help="samples of each of the 15 old prompts")
    parser.add_argument("--scale", type=float, default=3.0)
    parser.add_argument("--ddim-steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--logdir", type=Path, default=Path("logs/lora_new_word"))
    parser.add_argument("--outdir", type=Path, default=Path("outputs/lora_new_word"))
    parser.add_argument("--extra", nargs="*", default=[], help="more main.py overrides for the LoRA run")
    return parser.parse_args(argv)


def train(opt: argparse.Namespace) -> tuple[Path, float]:
    """``main.py`` on the LoRA config from the stage-2 run's ``last.ckpt``; (run dir, wall seconds)."""
    opt.logdir.mkdir(parents=True, exist_ok=True)
    before = set(opt.logdir.iterdir())
    command = [sys.executable, "main.py", "--base", str(LORA_CONFIG), "-t", "-s", str(opt.seed), "-l", str(opt.logdir),
               f"model.params.ckpt_path={(opt.stage2_run / 'checkpoints' / 'last.ckpt').resolve()}", *opt.extra]
    print("\n$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    seconds = time.perf_counter() - start
    (run,) = [p for p in set(opt.logdir.iterdir()) - before if p.name.endswith(LORA_CONFIG.stem)]
    return run, seconds


def new_word_prompts(opt: argparse.Namespace) -> tuple[list[str], list[ShapeSpec]]:
    """Captions with ``--word`` and the specs the checker should read (the colour ``--colour``)."""
    sizes, positions, kinds = itertools.cycle(SIZES), itertools.cycle(POSITIONS), itertools.cycle(KINDS)
    specs = [ShapeSpec(next(kinds), opt.colour, next(sizes), next(positions)) for _ in range(opt.samples)]
    captions = [spec.caption.replace(f" {opt.colour} ", f" {opt.word} ") for spec in specs]
    return captions, specs


@torch.no_grad()
def sample(model: torch.nn.Module, captions: list[str], opt: argparse.Namespace) -> list[np.ndarray]:
    """DDIM (η = 1) samples of ``captions`` at guidance ``--scale`` from the noise of ``--seed``, as uint8 HWC (a
    zero-terminal-SNR model with "trailing" spacing, as scripts/demo.py samples it)."""
    with model.ema_scope():
        c = model.get_learned_conditioning(captions)
        uc = model.get_learned_conditioning([""] * len(captions))
        seed_everything(opt.seed)
        size = model.image_size
        latents, _ = DDIMSampler(model).sample(
            S=opt.ddim_steps, conditioning=c, batch_size=len(captions), shape=(model.channels, size, size),
            verbose=False, unconditional_guidance_scale=opt.scale, unconditional_conditioning=uc, eta=1.0,
            timestep_spacing="trailing" if model.zero_terminal_snr else "uniform",
        )
        images = ((model.decode_first_stage(latents).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(images.permute(0, 2, 3, 1).cpu().numpy())


def measure(config: Path, ckpt: Path, lora: Path | None, opt: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Checker accuracies of the new-word and the old prompts, for the base model or with ``lora`` merged."""
    model, _ = load_model_from_config(OmegaConf.load(config), ckpt, torch.device("cpu"))
    if lora is not None:
        apply_lora_files(model, [LoraSpec(lora)])
    captions, specs = new_word_prompts(opt)
    old = prompt_specs(opt.per_prompt)
    return {"new word": attribute_accuracy(sample(model, captions, opt), specs),
            "old prompts": attribute_accuracy(sample(model, [s.caption for s in old], opt), old)}


def markdown(result: dict) -> str:
    rows = [f"| model | '{result['word']}' prompts: colour ({result['colour']}) | kind | size | position "
            "| old prompts: colour | kind | size | position |", "| --- |" + " ---: |" * 8]
    for name in ("base", "base + LoRA"):
        new, old = result[name]["new word"], result[name]["old prompts"]
        rows.append(f"| {name} | " + " | ".join(f"{figures[a]:.1%}" for figures in (new, old)
                                                  for a in ("color", "kind", "size", "position")) + " |")
    rows.append(f"\nLoRA file: {result['lora_bytes'] / 1024:.0f} KiB, {result['lora_parameters']:,} parameters; "
                f"training {result['train_seconds']:.0f} s.")
    return "\n".join(rows) + "\n"


@torch.no_grad()
def decoded_colours(stage1_run: Path, count: int = 60) -> dict[str, dict]:
    """For each of :data:`NEW_COLOURS`: the mean RGB that the stage-1 autoencoder reconstructs where ``count`` test
    shapes of that colour are drawn, and the fraction the checker reads as that colour (palette: the five + it)."""
    config = sorted((stage1_run / "configs").glob("*-project.yaml"))[-1]
    model, _ = load_model_from_config(OmegaConf.load(config), stage1_run / "checkpoints" / "last.ckpt",
                                      torch.device("cpu"))
    found = {}
    for name, rgb in NEW_COLOURS.items():
        items = [ShapesDataset(size=32, length=count, split="test", colours={name: rgb}, seed=3)[i]
                 for i in range(count)]
        x = torch.stack([torch.as_tensor(item["image"]) for item in items]).permute(0, 3, 1, 2)
        rec = model.decode(model.encode(x).mode()).clamp(-1, 1)
        pixels, rec_pixels = ((t.permute(0, 2, 3, 1).reshape(-1, 3) + 1) * 127.5 for t in (x, rec))
        drawn = (pixels - torch.tensor(rgb, dtype=pixels.dtype)).abs().sum(1) < 12
        images = list(((rec + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        specs = [ShapeSpec(item["kind"], item["color"], item["size"], item["position"]) for item in items]
        found[name] = {"rgb": rgb, "reconstructed_rgb": rec_pixels[drawn].mean(0).round().tolist(),
                       "read_as_it": attribute_accuracy(images, specs, palette={**COLORS, name: rgb})["color"]}
    return found


def main(argv: list[str] | None = None) -> dict:
    opt = parse_args(argv)
    if opt.decoded_colours is not None:
        found = decoded_colours(opt.decoded_colours)
        for name, figures in found.items():
            print(f"{name} {figures['rgb']}: reconstructed as {figures['reconstructed_rgb']}, read as {name} "
                  f"{figures['read_as_it']:.0%}")
        return found
    if opt.stage2_run is None:
        raise SystemExit("pass --stage2-run (or --decoded-colours)")
    if opt.lora_run is None:
        run, seconds = train(opt)
    else:
        run, seconds = opt.lora_run, float("nan")
    lora = run / "checkpoints" / "lora.safetensors"
    stage2_config = sorted((opt.stage2_run / "configs").glob("*-project.yaml"))[-1]
    ckpt = opt.stage2_run / "checkpoints" / "last.ckpt"
    from safetensors import safe_open

    with safe_open(str(lora), "pt") as handle:
        parameters = sum(int(np.prod(handle.get_slice(key).get_shape())) for key in handle.keys()
                         if not key.endswith(".alpha"))
    result = {"word": opt.word, "colour": opt.colour, "lora": str(lora), "lora_bytes": lora.stat().st_size,
              "lora_parameters": parameters, "train_seconds": seconds,
              "base": measure(stage2_config, ckpt, None, opt), "base + LoRA": measure(stage2_config, ckpt, lora, opt)}
    opt.outdir.mkdir(parents=True, exist_ok=True)
    (opt.outdir / "lora_new_word.json").write_text(json.dumps(result, indent=2))
    (opt.outdir / "lora_new_word.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
