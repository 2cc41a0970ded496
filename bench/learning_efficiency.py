"""Learning efficiency of the training-objective options on the embedded shapes data.

    python -m bench.learning_efficiency --stage1-run logs/<stage-1 run>          # every option, 1600 steps each
    python -m bench.learning_efficiency --stage1-run ... --options baseline min_snr --max-steps 800 --every 200

For each option the demo's stage-2 config (``configs/demo/txt2img_ldm.yaml``, or its v-model) is trained from the
same stage-1 autoencoder with the same seed, a weights-only checkpoint every ``--every`` steps. Every checkpoint
then samples each kind x colour prompt ``--samples-per-prompt`` times (DDIM, eta 1, the same starting noise for
every checkpoint and option) at each ``--scales`` guidance scale, and the independent checker
(:mod:`ldm.data.shapes_checker`) reads the images. Reported per option: the first checkpoint step at which colour
and kind adherence both reach ``--target`` (90 %) at guidance 3, the training wall time to that step (the run's
training seconds per step, or ``--seconds-per-step``, times the steps), the first at which all four attributes reach
``--all-target`` (80 %), and the figures of the last checkpoint. Zero-terminal-SNR models sample with "trailing"
timestep spacing (their first step is the pure-noise one); guidance rescale is left off (measured separately in
docs/training_objectives.md: at this size it costs kind adherence). The table goes to
``<outdir>/learning_efficiency.md`` and ``.json``; docs/training_objectives.md quotes a measured one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ldm.evaluation.demo_metrics import prompt_adherence, prompt_specs  # noqa: E402
from ldm.inference import load_model_from_config, seed_everything  # noqa: E402
from ldm.models.diffusion.ddim import DDIMSampler  # noqa: E402

STAGE2 = ROOT / "configs/demo/txt2img_ldm.yaml"
ATTRIBUTES = ("color", "kind", "size", "position")
STAGE2_V = ROOT / "configs/demo/txt2img_ldm_v.yaml"


@dataclass(frozen=True)
class Option:
    """One training recipe: its stage-2 config, ``main.py`` overrides and what its sampler needs."""

    config: Path
    overrides: tuple[str, ...] = ()
    sampler: dict = field(default_factory=dict)


ZERO_SNR = "model.params.zero_terminal_snr=true"
TRAILING = {"timestep_spacing": "trailing"}
OPTIONS: dict[str, Option] = {
    "baseline": Option(STAGE2),
    "min_snr": Option(STAGE2, ("model.params.snr_gamma=5.0",)),
    "offset_noise": Option(STAGE2, ("model.params.noise_offset=0.1",)),
    "input_perturbation": Option(STAGE2, ("model.params.input_perturbation=0.1",)),
    "v_prediction": Option(STAGE2_V),
    "zero_terminal_snr": Option(STAGE2_V, (ZERO_SNR,), TRAILING),
    "zero_terminal_snr_min_snr": Option(STAGE2_V, (ZERO_SNR, "model.params.snr_gamma=5.0"), TRAILING),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1-run", type=Path, required=True, help="a stage-1 main.py run (checkpoints/last.ckpt)")
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--max-steps", type=int, default=1600)
    parser.add_argument("--every", type=int, default=200, help="checkpoint (and measure) every this many steps")
    parser.add_argument("--scales", type=float, nargs="+", default=[3.0])
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--ddim-steps", type=int, default=25)
    parser.add_argument("--target", type=float, default=0.9, help="colour and kind adherence to reach")
    parser.add_argument("--all-target", type=float, default=0.8,
                        help="adherence that every attribute (colour, kind, size, position) must reach")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--logdir", type=Path, default=Path("logs/learning_efficiency"))
    parser.add_argument("--outdir", type=Path, default=Path("outputs/learning_efficiency"))
    parser.add_argument("--extra", nargs="*", default=[], help="more main.py overrides for every option")
    parser.add_argument("--seconds-per-step", type=float, default=None,
                        help="wall time per training step for the 'wall time to it' column (default: each run's own "
                        "training time / steps; give the figure of an idle run when the runs shared the machine: the "
                        "options cost the same per step)")
    return parser.parse_args(argv)


def train(name: str, option: Option, opt: argparse.Namespace) -> tuple[Path, float]:
    """``main.py`` on the option's config with a checkpoint every ``--every`` steps; (run dir, wall seconds).
    A finished run of the same name in ``--logdir`` is reused (its recorded time with it)."""
    opt.logdir.mkdir(parents=True, exist_ok=True)
    for run in sorted(opt.logdir.glob(f"*_le_{name}")):
        record = run / "learning_efficiency_train.json"
        if record.is_file():
            return run, json.loads(record.read_text())["seconds"]
    before = set(opt.logdir.iterdir())
    ckpt = (opt.stage1_run / "checkpoints" / "last.ckpt").resolve()
    command = [
        sys.executable, "main.py", "--base", str(option.config), "-t", "-s", str(opt.seed), "-l", str(opt.logdir),
        "-n", f"le_{name}", f"model.params.first_stage_config.params.ckpt_path={ckpt}",
        f"lightning.trainer.max_steps={opt.max_steps}", f"lightning.trainer.val_check_interval={opt.max_steps}",
        f"lightning.callbacks.image_logger.params.batch_frequency={10 * opt.max_steps}",
        f"lightning.callbacks.metrics_over_trainsteps_checkpoint.params.every_n_train_steps={opt.every}",
        *option.overrides, *opt.extra,
    ]
    print("\n$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    seconds = time.perf_counter() - start
    (run,) = [p for p in set(opt.logdir.iterdir()) - before if p.name.endswith(f"le_{name}")]
    (run / "learning_efficiency_train.json").write_text(json.dumps({"seconds": seconds, "steps": opt.max_steps}))
    return run, seconds


def checkpoints(run: Path) -> dict[int, Path]:
    """Step → weights-only checkpoint of the run (``trainstep_checkpoints/epoch=..-step=N.ckpt``)."""
    found = {}
    for path in (run / "checkpoints" / "trainstep_checkpoints").glob("*.ckpt"):
        found[int(path.stem.split("step=")[-1])] = path
    return dict(sorted(found.items()))


@torch.no_grad()
def adherence(config: Path, ckpt: Path, option: Option, scale: float, opt: argparse.Namespace) -> dict[str, float]:
    """Checker accuracy per attribute of the prompts' samples from ``ckpt`` at guidance ``scale``."""
    model, _ = load_model_from_config(OmegaConf.load(config), ckpt, torch.device("cpu"))
    specs = prompt_specs(opt.samples_per_prompt)
    with model.ema_scope():
        c = model.get_learned_conditioning([s.caption for s in specs])
        uc = model.get_learned_conditioning([""] * len(specs))
        seed_everything(opt.seed)
        size = model.image_size
        latents, _ = DDIMSampler(model).sample(
            S=opt.ddim_steps, conditioning=c, batch_size=len(specs), shape=(model.channels, size, size), verbose=False,
            unconditional_guidance_scale=scale, unconditional_conditioning=uc, eta=1.0, **option.sampler,
        )
        images = ((model.decode_first_stage(latents).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arrays = list(images.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8))
    return prompt_adherence(arrays, specs)["accuracy"]


def measure(name: str, opt: argparse.Namespace) -> dict:
    option = OPTIONS[name]
    run, seconds = train(name, option, opt)
    config = sorted((run / "configs").glob("*-project.yaml"))[-1]
    curve = {}
    for step, ckpt in checkpoints(run).items():
        curve[step] = {f"{s:g}": adherence(config, ckpt, option, s, opt) for s in opt.scales}
        print(name, step, json.dumps(curve[step]), flush=True)
    per_step = seconds / opt.max_steps
    wall_per_step = opt.seconds_per_step if opt.seconds_per_step is not None else per_step
    reached = [s for s, figs in curve.items() if min(figs["3"]["color"], figs["3"]["kind"]) >= opt.target]
    first = reached[0] if reached else None
    every = [s for s, figs in curve.items() if min(figs["3"][a] for a in ATTRIBUTES) >= opt.all_target]
    return {"option": name, "overrides": list(option.overrides), "config": str(option.config.relative_to(ROOT)),
            "sampler": option.sampler, "run": str(run), "train_seconds": seconds, "seconds_per_step": per_step,
            "steps_to_target": first, "seconds_to_target": None if first is None else first * wall_per_step,
            "steps_to_all_four": every[0] if every else None,
            "curve": {str(k): v for k, v in curve.items()}}


def markdown(results: list[dict], opt: argparse.Namespace) -> str:
    lines = [
        f"| option | steps to colour & kind >= {opt.target:.0%} | wall time to it | steps to all four >= "
        f"{opt.all_target:.0%} | colour | kind | size | position | all four in one image | s/step of the run |",
        "| --- |" + " ---: |" * 10,
    ]
    for r in results:
        last = r["curve"][max(r["curve"], key=int)]["3"]
        steps = "not reached" if r["steps_to_target"] is None else str(r["steps_to_target"])
        wall = "–" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.0f} s"
        every = "not reached" if r.get("steps_to_all_four") is None else str(r["steps_to_all_four"])
        lines.append(f"| {r['option']} | {steps} | {wall} | {every} | {last['color']:.1%} | {last['kind']:.1%} "
                     f"| {last['size']:.1%} | {last['position']:.1%} | {last['all']:.1%} "
                     f"| {r['seconds_per_step']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    opt = parse_args(argv)
    if 3.0 not in opt.scales:
        opt.scales = [3.0, *opt.scales]
    opt.outdir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in opt.options:
        results.append(measure(name, opt))
        (opt.outdir / "learning_efficiency.json").write_text(json.dumps(results, indent=2))
        (opt.outdir / "learning_efficiency.md").write_text(markdown(results, opt))
    print(markdown(results, opt))
    return results


if __name__ == "__main__":
    main()
