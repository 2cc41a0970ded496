"""Sampler benchmark: per-step overhead and steps needed to match 1000-step DDPM on Gaussian data.

    python bench/samplers.py [--device cpu|cuda]

1. Overhead: wall time of a sampling run minus the time spent inside ``model.apply_model``, per model call
   step, for SD-sized latents ``(4, 4, 64, 64)`` with guidance (doubled batch).
2. Accuracy: data x_0 ~ N(μ, σ²) with the exact ε* as the model (SD linear schedule); reference = 1000-step
   ancestral DDPM (DDIM with every step and η = 1). For each sampler, the fewest steps S from a grid whose
   samples are within ``|Δmean| + |Δstd| < THRESHOLD`` of the reference samples.
Prints markdown tables. Runs in well under 2 minutes on CPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.models.diffusion.ddim import DDIMSampler  # noqa: E402
from ldm.models.diffusion.dpm_solver import DPMSolverSampler  # noqa: E402
from ldm.models.diffusion.plms import PLMSSampler  # noqa: E402
from ldm.modules.diffusionmodules.util import make_beta_schedule  # noqa: E402

MU, SIGMA = 0.5, 0.5
THRESHOLD = 0.03
STEP_GRID = (5, 10, 15, 20, 25, 50, 100, 200, 250)
QUIET = {"verbose": False, "disable_progress": True}


class TimedGaussianModel(nn.Module):
    """ε*(x_t, t) = √(1 − ᾱ_t)(x_t − √ᾱ_t m(c))/(ᾱ_t σ² + 1 − ᾱ_t) for data N(μ + m(c), σ²), with m(c) the mean
    of a tensor conditioning; accumulates the seconds spent in ``apply_model``."""

    parameterization = "eps"

    def __init__(self, mu: float, sigma: float, device: torch.device) -> None:
        super().__init__()
        betas = make_beta_schedule("linear", 1000, 0.00085, 0.012)
        alphas_cumprod = np.cumprod(1.0 - betas)
        self.num_timesteps, self.mu, self.sigma = 1000, mu, sigma
        self.register_buffer("betas", torch.tensor(betas, dtype=torch.float32))
        self.register_buffer("alphas_cumprod", torch.tensor(alphas_cumprod, dtype=torch.float32))
        prev = np.append(1.0, alphas_cumprod[:-1])
        self.register_buffer("alphas_cumprod_prev", torch.tensor(prev, dtype=torch.float32))
        self.to(device)
        self.model_seconds = 0.0

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        synchronize(x.device)
        start = time.perf_counter()
        log_ab = self.alphas_cumprod.double().log()
        lo = t.double().floor().long().clamp(0, 999)
        w = t.double() - lo
        ab = torch.exp(log_ab[lo] * (1 - w) + log_ab[(lo + 1).clamp(max=999)] * w).float()
        ab = ab.view(-1, *([1] * (x.ndim - 1)))
        mean = self.mu if cond is None else self.mu + cond.reshape(cond.shape[0], -1).mean(1).view_as(ab)
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * mean) / (ab * self.sigma**2 + 1 - ab)
        synchronize(x.device)
        self.model_seconds += time.perf_counter() - start
        return eps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_sampler(name: str, model: nn.Module, steps: int, x_T: torch.Tensor, **kwargs) -> torch.Tensor:
    shape = tuple(x_T.shape[1:])
    if name == "DDIM (η=0)":
        return DDIMSampler(model).sample(steps, x_T.shape[0], shape, x_T=x_T, **QUIET, **kwargs)[0]
    if name == "DDIM (η=1)":
        return DDIMSampler(model).sample(steps, x_T.shape[0], shape, x_T=x_T, eta=1.0, **QUIET, **kwargs)[0]
    if name == "PLMS":
        return PLMSSampler(model).sample(steps, x_T.shape[0], shape, x_T=x_T, **QUIET, **kwargs)[0]
    skip_type = "logSNR" if "logSNR" in name else "time_uniform"
    return DPMSolverSampler(model).sample(steps, x_T.shape[0], shape, x_T=x_T, skip_type=skip_type, **QUIET, **kwargs)[
        0
    ]


SAMPLERS = ("DDIM (η=0)", "DDIM (η=1)", "PLMS", "DPM-Solver++ (time_uniform)", "DPM-Solver++ (logSNR)")
MODEL_CALLS: dict[str, Callable[[int], int]] = {"PLMS": lambda s: s + 1}


def overhead_table(device: torch.device, steps: int = 50, repeats: int = 3) -> list[str]:
    model = TimedGaussianModel(MU, SIGMA, device)
    x_T = torch.randn(4, 4, 64, 64, device=device)
    c, uc = torch.randn(4, 77, 768, device=device), torch.zeros(4, 77, 768, device=device)
    guidance = {"conditioning": c, "unconditional_conditioning": uc, "unconditional_guidance_scale": 7.5}
    rows = [
        "| sampler | steps | model calls | total ms/step | model ms/call | overhead ms/step |",
        "|---|---|---|---|---|---|",
    ]
    for name in SAMPLERS:
        best: tuple[float, float] | None = None
        for _ in range(repeats):
            model.model_seconds = 0.0
            synchronize(device)
            start = time.perf_counter()
            run_sampler(name, model, steps, x_T, **guidance)
            synchronize(device)
            total = time.perf_counter() - start
            if best is None or total < best[0]:
                best = (total, model.model_seconds)
        total, model_seconds = best
        calls = MODEL_CALLS.get(name, lambda s: s)(steps)
        rows.append(
            f"| {name} | {steps} | {calls} | {1e3 * total / steps:.2f} | {1e3 * model_seconds / calls:.2f} | "
            f"{1e3 * (total - model_seconds) / steps:.2f} |"
        )
    return rows


def accuracy_table(device: torch.device, n: int = 100_000) -> list[str]:
    model = TimedGaussianModel(MU, SIGMA, device)
    generator = torch.Generator(device).manual_seed(0)
    x_T = torch.randn(1, n, device=device, generator=generator)
    ddpm = DDIMSampler(model)
    ddpm.make_schedule(50, ddim_eta=1.0, verbose=False)
    reference, _ = ddpm.ddim_sampling(
        None, (1, n), x_T=x_T, ddim_use_original_steps=True, generator=generator, disable_progress=True
    )
    ref_mean, ref_std = reference.mean().item(), reference.std().item()
    rows = [
        f"Reference: 1000-step DDPM on N({MU}, {SIGMA}²) data, n = {n}: mean {ref_mean:.4f}, std {ref_std:.4f}; "
        f"threshold |Δmean| + |Δstd| < {THRESHOLD} (SE of the difference ≈ {2 * SIGMA / math.sqrt(n):.4f}).",
        "",
        "| sampler | steps needed | distance at that S | distance at S=20 | distance at S=50 |",
        "|---|---|---|---|---|",
    ]
    for name in SAMPLERS:
        distances = {}
        for steps in STEP_GRID:
            x = run_sampler(name, model, steps, x_T, generator=torch.Generator(device).manual_seed(1))
            distances[steps] = abs(x.mean().item() - ref_mean) + abs(x.std().item() - ref_std)
        needed = next((s for s in STEP_GRID if distances[s] < THRESHOLD), None)
        at_needed = f"{distances[needed]:.4f}" if needed else "-"
        rows.append(
            f"| {name} | {needed or f'> {STEP_GRID[-1]}'} | {at_needed} | {distances[20]:.4f} | {distances[50]:.4f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"## Sampler overhead ({device}, latents (4, 4, 64, 64), guidance 7.5, analytic model)\n")
    print("\n".join(overhead_table(device)))
    print(f"\n## Steps to match 1000-step DDPM ({device})\n")
    print("\n".join(accuracy_table(device)))


if __name__ == "__main__":
    main()
