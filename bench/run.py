"""Run the benchmarks against diffusers and write the markdown table to ``bench/results.md`` (and print it).

    python -m bench.run                       # everything: UNet 64x64 and 32x32, VAE, CLIP, txt2img, training
    python -m bench.run --only train_step     # one training step: on the fly / latent cache / diffusers' UNet
    python -m bench.run --only unet --latents 32 --repeats 3
    python -m bench.run --only gemm_conv       # CPU convs as GEMMs against oneDNN, per width and size

Needs ``pip install -e '.[bench]'`` (diffusers). Ratios are ours/diffusers, measured in this one process with the
two implementations' runs interleaved; times are medians; memory is the peak growth of the resident set during
one call (see ``bench/common.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import torch

from bench import clip, gemm_conv, train_step, train_throughput, txt2img, unet_step, vae
from bench.common import Row, machine, sd_config
from bench.flops import fused_upsample_savings, unet_step_flops
from bench.unet_step import PACKED

BENCHMARKS = ("unet", "vae", "clip", "txt2img", "train", "train_step", "gemm_conv")
RESULTS = Path(__file__).with_name("results.md")


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None or b <= 0 else f"{a / b:.2f}"


def results_table(rows: list[Row]) -> list[str]:
    lines = [
        "| benchmark | ours (s) | diffusers (s) | time ours/diffusers | ours peak (MiB) | diffusers peak (MiB) "
        "| memory ours/diffusers | max \\|Δ\\| | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.benchmark} | {r.ours_s:.3f} | {_num(r.theirs_s, '.3f')} | {_ratio(r.ours_s, r.theirs_s)} "
            f"| {_num(r.ours_mb, '.0f')} | {_num(r.theirs_mb, '.0f')} | {_ratio(r.ours_mb, r.theirs_mb)} "
            f"| {_num(r.max_abs_diff, '.1e')} | {r.note} |"
        )
    return lines


def flops_table(rows: list[Row], latents: list[int]) -> list[str]:
    """Achieved GFLOP/s of each UNet step row beside the fp32 matmul rate measured in the same session
    (floor = GFLOP / that rate)."""
    lines = [
        "FLOPs: torch's flop counter plus the attention inside scaled_dot_product_attention (4·B·H·L·S·E per call); "
        "matmul: a 2048² fp32 product timed in the same session (same threads).",
        "",
        "| UNet step | GFLOP | of which attention | matmul GFLOP/s | floor (s) | ours GFLOP/s | diffusers GFLOP/s "
        "| ours / floor | diffusers / floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for latent in latents:
        total, attention = (f / 1e9 for f in unet_step_flops(sd_config().unet_config, latent))
        for row in rows:
            if row.benchmark.startswith(f"UNet step {latent}x{latent},"):
                floor = total / row.matmul_gflops
                lines.append(
                    f"| {row.benchmark.removeprefix('UNet step ')} | {total:,.0f} | {attention:,.0f} "
                    f"| {row.matmul_gflops:.0f} | {floor:.2f} | {total / row.ours_s:.0f} | {total / row.theirs_s:.0f} "
                    f"| {row.ours_s / floor:.2f} | {row.theirs_s / floor:.2f} |"
                )
    if any(PACKED in row.benchmark for row in rows):
        saved = ", ".join(
            f"{latent}x{latent} {fused_upsample_savings(sd_config().unet_config, latent) / 1e9:,.0f} GFLOP fewer"
            for latent in latents
        )
        lines += ["", "The GFLOP and GFLOP/s columns count the original computation for every row. The prepacked rows "
                  "run each upsampling conv as one 2x2 conv to its four output phases (`PackedUpsampleConv`) and so "
                  f"execute fewer: {saved}."]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--latents", nargs="+", type=int, default=[64, 32], help="UNet latent sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    opt = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if opt.threads:
        torch.set_num_threads(opt.threads)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_at_start = os.getloadavg()[0]
    rows: list[Row] = []
    if "unet" in opt.only:
        rows += unet_step.run(tuple(opt.latents), opt.repeats)
    if "vae" in opt.only:
        rows += vae.run(repeats=opt.repeats)
    if "clip" in opt.only:
        rows += clip.run(repeats=max(opt.repeats, 5))
    if "txt2img" in opt.only:
        rows += txt2img.run(repeats=1)
    if "train" in opt.only:
        rows += train_throughput.run()
    if "train_step" in opt.only:
        rows += train_step.run(repeats=max(opt.repeats, 5))
    if "gemm_conv" in opt.only:
        rows += gemm_conv.run(repeats=max(opt.repeats, 5))

    lines = [f"Measured {started} on: {machine()} (load {load_at_start:.1f} at the start).", "",
             *results_table(rows)]
    if "unet" in opt.only:
        lines += ["", *flops_table(rows, opt.latents)]
    text = "\n".join(lines) + "\n"
    opt.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
