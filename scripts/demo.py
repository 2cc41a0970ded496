"""The whole method on the embedded shapes data, on a CPU, in minutes: train both stages, sample, measure.

    python scripts/demo.py                 # the full demo (`make demo`): 14.6-14.9 minutes on 2 CPU cores
    python scripts/demo.py --smoke         # the same path with a few steps (what tests/test_demo.py runs)

1. ``main.py --base configs/demo/autoencoder_kl.yaml -t``: stage 1, a KL autoencoder (32x32 px -> 8x8x4).
2. ``main.py --base configs/demo/txt2img_ldm_zero_snr.yaml -t`` with the stage-1 ``last.ckpt``: stage 2, latent
   diffusion (a v-model with zero terminal SNR) conditioned on a text encoder trained from scratch on the captions,
   with caption dropout for guidance.
3. Stage 1 is measured on held-out shapes (PSNR, SSIM, KL, latent std, and the Fréchet distance of the
   reconstructions in the feature space of a small classifier trained on the shapes data, :mod:`ldm.evaluation.
   shapes_features`: not Inception FID); ``scripts/txt2img.py`` samples every kind x colour prompt at guidance
   scale 1 and at the larger scales, an independent pixel-statistics checker (``ldm.data.shapes_checker``) reads
   what each image shows, and the samples' Fréchet distance to held-out shapes in the same feature space is set
   beside the distance of as many real images (the floor that so few images give).
4. The figures go to the terminal and to ``<outdir>/demo_report.md`` and ``demo_report.json`` (the latest run's);
   samples and grids to ``<outdir>/<stage-2 run name>/txt2img-scale<s>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ldm.evaluation.demo_metrics import (  # noqa: E402
    CHANCE,
    heldout_images,
    prompt_adherence,
    prompt_specs,
    read_images,
    reconstruction_stats,
    samples_shapes_distance,
    stage1_quality,
)
from ldm.evaluation.shapes_features import ShapesFeatureExtractor, ShapesFeatureSettings  # noqa: E402
from ldm.inference import load_model_from_config  # noqa: E402

STAGE1_CONFIG = ROOT / "configs/demo/autoencoder_kl.yaml"
STAGE2_CONFIG = ROOT / "configs/demo/txt2img_ldm_zero_snr.yaml"
ATTRIBUTES = ("color", "kind", "size", "position", "all")
SMOKE_STEPS_SCALE = 0.004
#: The feature net of the smoke run: trained in a second, for the path only (its distances mean little).
SMOKE_FEATURES = ShapesFeatureSettings(train_images=256, epochs=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", default="logs", help="where main.py puts the two training runs")
    parser.add_argument("--outdir", default="outputs/demo", help="samples, grids and the report")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply both stages' lightning.trainer.max_steps (e.g. 0.5 for a quicker look)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"a few steps of everything (steps-scale {SMOKE_STEPS_SCALE}, 1 sample per prompt, "
                        "5 sampler steps): checks the path, not the quality")
    parser.add_argument("--samples-per-prompt", type=int, default=4,
                        help="samples for each of the 15 kind x colour prompts, at each guidance scale")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 5.0, 7.5],
                        help="classifier-free guidance scales to sample and measure at (1 = no guidance)")
    parser.add_argument("--ddim_steps", type=int, default=25, help="DDIM steps per sample")
    parser.add_argument("--ddim_eta", type=float, default=1.0,
                        help="DDIM noise (1 = ancestral-like, 0 = deterministic; docs/demo.md compares the two)")
    parser.add_argument("--seed", type=int, default=23, help="seed of training (main.py -s) and sampling")
    parser.add_argument("--stage2-config", type=Path, default=STAGE2_CONFIG,
                        help="the stage-2 config (default: the zero-terminal-SNR v-model; configs/demo/txt2img_ldm.yaml"
                        " is the eps-model with the original schedule, txt2img_ldm_v.yaml the v-model with it)")
    parser.add_argument("--stage1-run", type=Path, default=None,
                        help="reuse this stage-1 run (a main.py logdir with checkpoints/last.ckpt) instead of "
                        "training stage 1")
    opt = parser.parse_args(argv)
    if opt.smoke:
        opt.steps_scale, opt.samples_per_prompt, opt.ddim_steps = SMOKE_STEPS_SCALE, 1, 5
    if opt.steps_scale <= 0:
        parser.error(f"--steps-scale must be positive, got {opt.steps_scale}")
    if not opt.stage2_config.is_file():
        parser.error(f"--stage2-config {opt.stage2_config}: no such file")
    if opt.stage1_run is not None and not (opt.stage1_run / "checkpoints" / "last.ckpt").is_file():
        parser.error(f"--stage1-run {opt.stage1_run} has no checkpoints/last.ckpt; pass a stage-1 main.py logdir")
    return opt


# ----------------------------------------------------------------------------------------------------------------
# running the user-facing commands


def run(command: list[str]) -> float:
    """Run ``command`` from the repository root with its output on the terminal; returns its wall time (s)."""
    print("\n$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - start


def train(config: Path, logdir: Path, steps_scale: float, seed: int, overrides: list[str]) -> tuple[Path, float]:
    """``main.py --base config -t`` with ``max_steps`` scaled; returns the new run's logdir and the wall time."""
    lightning = OmegaConf.load(config).lightning
    steps = max(2, round(lightning.trainer.max_steps * steps_scale))
    if steps != lightning.trainer.max_steps:
        frequency = max(1, round(lightning.callbacks.image_logger.params.batch_frequency * steps_scale))
        overrides = [
            *overrides,
            f"lightning.trainer.max_steps={steps}",
            f"lightning.trainer.val_check_interval={steps}",
            f"lightning.callbacks.image_logger.params.batch_frequency={frequency}",
        ]
    logdir.mkdir(parents=True, exist_ok=True)
    before = set(logdir.iterdir())
    seconds = run([sys.executable, "main.py", "--base", str(config), "-t", "-s", str(seed), "-l", str(logdir),
                   *overrides])
    runs = [p for p in set(logdir.iterdir()) - before if p.name.endswith(config.stem)]
    if len(runs) != 1 or not (runs[0] / "checkpoints" / "last.ckpt").is_file():
        raise RuntimeError(f"main.py finished but no new run with checkpoints/last.ckpt appeared in {logdir}")
    return runs[0], seconds


def run_config(run_dir: Path) -> Path:
    """The merged config main.py saved for the run (``configs/<now>-project.yaml``)."""
    found = sorted((run_dir / "configs").glob("*-project.yaml"))
    if not found:
        raise RuntimeError(f"{run_dir}/configs has no *-project.yaml; was it written by main.py?")
    return found[-1]


def sample(run_dir: Path, prompts_file: Path, outdir: Path, scale: float, opt: argparse.Namespace,
           batch_size: int) -> float:
    """``scripts/txt2img.py`` on every line of ``prompts_file`` at guidance ``scale``; returns the wall time. A
    zero-terminal-SNR model starts at its pure-noise step (``--timestep_spacing trailing``)."""
    config = run_config(run_dir)
    zero_snr = bool(OmegaConf.select(OmegaConf.load(config), "model.params.zero_terminal_snr", default=False))
    spacing = ["--timestep_spacing", "trailing"] if zero_snr else []
    return run([
        sys.executable, "scripts/txt2img.py", "--from-file", str(prompts_file), "--outdir", str(outdir),
        "--config", str(config), "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"),
        "--H", "32", "--W", "32", "--C", "4", "--f", "4", "--n_samples", str(batch_size), "--n_iter", "1",
        "--n_rows", "15", "--scale", str(scale), "--ddim_steps", str(opt.ddim_steps), "--ddim_eta", str(opt.ddim_eta),
        "--seed", str(opt.seed), "--precision", "full", "--device", "cpu", *spacing,
    ])


# ----------------------------------------------------------------------------------------------------------------
# measuring


def stage1_figures(run_dir: Path, count: int, extractor: ShapesFeatureExtractor) -> dict[str, float]:
    """PSNR / KL / latent std, and 8-bit PSNR / SSIM / shapes-feature Fréchet distance of the reconstructions, of
    the stage-1 autoencoder on ``count`` held-out test shapes."""
    config = OmegaConf.load(run_config(run_dir))
    model, _ = load_model_from_config(config, run_dir / "checkpoints" / "last.ckpt", device="cpu")
    images = heldout_images(count, size=config.model.params.ddconfig.resolution)
    return {**reconstruction_stats(model, images), **stage1_quality(model, images, extractor)}


def report_markdown(report: dict) -> str:
    s1, timings = report["stage1"], report["timings_s"]
    lines = [
        "# Demo report", "",
        f"Machine: {report['machine']}", "",
        "## Stage 1: autoencoder, held-out test shapes", "",
        "| PSNR (dB, target >= 28) | worst image PSNR (dB) | 8-bit PSNR (dB) | SSIM | shapes FD of reconstructions "
        "| KL per image (nats) | latent std | latent mean |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {s1['psnr_db']:.2f} | {s1['psnr_db_min']:.2f} | {s1['psnr_8bit_db']:.2f} | {s1['ssim']:.3f} | "
        f"{s1['shapes_fd']:.2f} | {s1['kl']:.1f} | {s1['latent_std']:.3f} | {s1['latent_mean']:.3f} |", "",
        "shapes FD: the Fréchet distance in the feature space of a small classifier trained on the shapes data "
        "(ldm.evaluation.shapes_features), not Inception FID; comparable only with other shapes FDs.", "",
        f"## Stage 2: prompt adherence ({report['samples']} samples per scale, DDIM {report['ddim_steps']} steps, "
        f"eta {report['ddim_eta']:g}, independent checker)", "",
        "| guidance scale | " + " | ".join(ATTRIBUTES) + " | shapes FD to held-out shapes |",
        "| --- |" + " --- |" * (len(ATTRIBUTES) + 1),
    ]
    distances = report["shapes_fd"]
    for scale, figures in report["stage2"].items():
        lines.append(f"| {scale} | " + " | ".join(f"{figures[a]:.1%}" for a in ATTRIBUTES)
                     + f" | {distances[scale]['shapes_fd']:.2f} |")
    floor = next(iter(distances.values()))["real_floor"] if distances else float("nan")
    lines.append("| chance | " + " | ".join(f"{report['chance'][a]:.1%}" for a in ATTRIBUTES)
                 + f" | real shapes: {floor:.2f} |")
    lines += ["", "Targets: colour and kind >= 90%; all four attributes >= 80% at guidance >= 3.", "",
              "## Wall time (s)", "",
              "| " + " | ".join(timings) + " |", "|" + " --- |" * len(timings),
              "| " + " | ".join(f"{t:.0f}" for t in timings.values()) + " |", "", "## Files", ""]
    lines += [f"- {name}: `{path}`" for name, path in report["paths"].items()]
    return "\n".join(lines) + "\n"


def machine() -> str:
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={threads}, "
            f"load average at the end {load}, Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> dict:
    opt = parse_args(argv)
    logdir, outdir = Path(opt.logdir).resolve(), Path(opt.outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    if opt.stage1_run is None:
        stage1, timings["stage 1 training"] = train(STAGE1_CONFIG, logdir, opt.steps_scale, opt.seed, [])
    else:
        stage1, timings["stage 1 training"] = opt.stage1_run.resolve(), 0.0
    ckpt = stage1 / "checkpoints" / "last.ckpt"
    first_stage = f"model.params.first_stage_config.params.ckpt_path={ckpt}"
    stage2, timings["stage 2 training"] = train(opt.stage2_config, logdir, opt.steps_scale, opt.seed, [first_stage])

    tick = time.perf_counter()
    extractor = ShapesFeatureExtractor(settings=SMOKE_FEATURES if opt.smoke else None)
    heldout = 64 if opt.smoke else 512
    figures1 = stage1_figures(stage1, heldout, extractor)
    timings["stage 1 evaluation"] = time.perf_counter() - tick

    specs = prompt_specs(opt.samples_per_prompt)
    sample_root = outdir / stage2.name
    sample_root.mkdir(parents=True)
    prompts_file = sample_root / "prompts.txt"
    prompts_file.write_text("".join(spec.caption + "\n" for spec in specs))
    figures2, distances = {}, {}
    paths = {"stage 1 run": str(stage1), "stage 2 run": str(stage2), "prompts": str(prompts_file)}
    timings["sampling"] = 0.0
    for scale in opt.scales:
        folder = sample_root / f"txt2img-scale{scale:g}"
        timings["sampling"] += sample(stage2, prompts_file, folder, scale, opt, batch_size=min(len(specs), 60))
        images = read_images(sorted((folder / "samples").glob("*.png")))
        figures2[f"{scale:g}"] = prompt_adherence(images, specs)["accuracy"]
        distances[f"{scale:g}"] = samples_shapes_distance(folder, heldout=heldout, extractor=extractor)
        paths[f"samples, scale {scale:g}"] = str(folder / "samples")
        paths[f"grid, scale {scale:g}"] = str(folder / "grid-0000.png")
    timings["total"] = time.perf_counter() - start

    report = {"machine": machine(), "stage2_config": str(opt.stage2_config), "stage1": figures1, "stage2": figures2,
              "shapes_fd": distances, "chance": CHANCE, "samples": len(specs),
              "steps_scale": opt.steps_scale, "ddim_steps": opt.ddim_steps, "ddim_eta": opt.ddim_eta,
              "timings_s": timings, "paths": paths}
    (outdir / "demo_report.json").write_text(json.dumps(report, indent=2))
    markdown = report_markdown(report)
    (outdir / "demo_report.md").write_text(markdown)
    print("\n" + markdown + f"\nReport: {outdir / 'demo_report.md'} (and demo_report.json)", flush=True)
    return report


if __name__ == "__main__":
    main()
