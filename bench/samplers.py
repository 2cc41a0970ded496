"""Sampler benchmark: every sampler's overhead beside the model, and its error per model evaluation.

    python -m bench.samplers [--device cpu|cuda] [--only overhead accuracy demo] [--demo_ckpt last.ckpt]

1. Overhead (:func:`overhead_table`): wall time of a sampling run minus the time spent inside
   ``model.apply_model``, per step and per model call, for SD-sized latents ``(4, 4, 64, 64)`` with guidance
   (doubled batch) on an analytic model, so that the table shows the sampler's own arithmetic.
2. Accuracy (:mod:`bench.sampler_accuracy`): the error against a 1000-step reference as a function of the number
   of model evaluations, for every sampler and schedule, on an analytic model and on the demo model.

This module holds what both need: the list of samplers (:func:`sampler_specs`, by the AUTOMATIC1111 names of
:mod:`ldm.models.diffusion.named_samplers`), one way to run any of them from the same unit noise
(:func:`run_sampler`), and a meter of the model's calls (:class:`ModelMeter`). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.models.diffusion.named_samplers import SAMPLERS, Family  # noqa: E402
from ldm.modules.diffusionmodules.util import make_beta_schedule  # noqa: E402

QUIET = {"verbose": False, "disable_progress": True}
K_SAMPLERS = "ldm.models.diffusion.k_samplers"
#: Samplers whose steps (but the last, an Euler step to σ = 0) cost two model calls.
TWO_CALL_STEPS = {
    "sample_heun", "sample_dpm_2", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde",
}  # fmt: skip
#: The sampler classes that space their own steps on the model's discrete times (``kind`` of a spec).
FRONT_ENDS = {
    "ddim": "ldm.models.diffusion.ddim:DDIMSampler",
    "plms": "ldm.models.diffusion.plms:PLMSSampler",
    "dpm_solver": "ldm.models.diffusion.dpm_solver:DPMSolverSampler",
    "unipc": "ldm.models.diffusion.uni_pc:UniPCSampler",
}


# --------------------------------------------------------------------------------------------------------
# The samplers
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerSpec:
    """One benchmarked sampler. ``kind``: ``"k"`` (a ``sample_*`` function over a σ list), ``"dpm_fast"``,
    ``"dpm_adaptive"`` (their own steps between σ_min and σ_max) or a key of :data:`FRONT_ENDS` (the class's
    ``sample(S, ...)`` from VP noise on its own discrete times). ``options`` are passed to the call."""

    name: str
    kind: str
    function: str = ""
    module: str = K_SAMPLERS
    options: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = False

    @property
    def takes_schedule(self) -> bool:
        return self.kind == "k"

    def steps_for(self, nfe: int) -> int:
        """The most steps whose model calls do not exceed ``nfe`` (at least one)."""
        if self.function in TWO_CALL_STEPS:
            return max(1, (nfe + 1) // 2)
        if self.kind == "plms":  # the first step is a second-order (two-call) start
            return max(1, nfe - 1)
        return max(1, nfe)

    def load(self) -> Any:
        """The sampler function or class; ``NotImplementedError`` if it does not exist (yet)."""
        if self.kind in FRONT_ENDS:
            module, name = FRONT_ENDS[self.kind].split(":")
        else:
            module, name = self.module, self.function
        found = getattr(importlib.import_module(module), name, None)
        if found is None:
            raise NotImplementedError(f"{module}.{name} ({self.name}) is not available")
        return found

    def available(self) -> bool:
        try:
            self.load()
        except (NotImplementedError, ImportError):
            return False
        return True


def _spec_of(entry: Any) -> SamplerSpec | None:
    legacy = {"DDIMSampler": "ddim", "PLMSSampler": "plms", "DPMSolverSampler": "dpm_solver"}
    if entry.family is Family.LEGACY:
        kind = legacy[entry.function]
        options = {"skip_type": "logSNR"} if kind == "dpm_solver" else {}
        name = "DPM-Solver++ 2M (logSNR)" if kind == "dpm_solver" else f"{entry.name} (class)"
        return SamplerSpec(name, kind, options=options)
    kind = entry.function.removeprefix("sample_") if entry.family is Family.DPM_SOLVER else "k"
    stochastic = entry.family in (Family.ANCESTRAL, Family.SDE)
    return SamplerSpec(entry.name, kind, entry.function, entry.module, dict(entry.options), stochastic)


def sampler_specs() -> list[SamplerSpec]:
    """Every sampler of the named table, plus DDIM η = 1, DPM-Solver++ on uniform times and UniPC's class
    (the authors' defaults: bh1, order 3, no final denoising step) and k-style order 3."""
    specs = [spec for entry in SAMPLERS.values() if (spec := _spec_of(entry)) is not None]
    unipc = next(s for s in specs if s.function == "sample_unipc")
    specs += [
        SamplerSpec("UniPC bh2 order 3", "k", unipc.function, unipc.module, {"order": 3}),
        SamplerSpec("DDIM η=1 (class)", "ddim", options={"eta": 1.0}, stochastic=True),
        SamplerSpec("DPM-Solver++ 2M (time_uniform)", "dpm_solver", options={"skip_type": "time_uniform"}),
        SamplerSpec("UniPC bh1 order 3 (class)", "unipc"),
    ]
    return specs


# --------------------------------------------------------------------------------------------------------
# Running one
# --------------------------------------------------------------------------------------------------------


class ModelMeter:
    """Counts the calls of ``model.apply_model`` and the seconds spent in them while :meth:`active`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls = 0
        self.seconds = 0.0

    @contextlib.contextmanager
    def active(self) -> Iterator[ModelMeter]:
        inner = self.model.apply_model

        def metered(x: torch.Tensor, t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            synchronize(x.device)
            start = time.perf_counter()
            out = inner(x, t, *args, **kwargs)
            synchronize(x.device)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return out

        shadowed = vars(self.model).get("apply_model")  # an outer meter's, when nested
        self.model.apply_model = metered
        try:
            yield self
        finally:
            if shadowed is None:
                del self.model.apply_model  # the class's method shows through again
            else:
                self.model.apply_model = shadowed


@dataclass(frozen=True)
class Guidance:
    """The conditioning of a run: ``cond`` alone (``scale`` 1) or classifier-free guidance with ``uncond``."""

    cond: Any = None
    uncond: Any = None
    scale: float = 1.0

    def k_arguments(self) -> dict[str, Any]:
        if self.uncond is None:
            return {"cond": self.cond}
        return {"cond": self.cond, "uncond": self.uncond, "cond_scale": self.scale}

    def front_end_arguments(self) -> dict[str, Any]:
        return {"conditioning": self.cond, "unconditional_conditioning": self.uncond,
                "unconditional_guidance_scale": self.scale}  # fmt: skip


@dataclass(frozen=True)
class SamplerRun:
    """A run in the variance-exploding view z = x_0 + σ ε: it went from ``z_start`` at ``sigma_start`` to ``z``
    at ``sigma_end``; when ``sigma_end`` is 0 the last step was a denoising one from ``sigma_last`` > 0."""

    z: torch.Tensor
    z_start: torch.Tensor
    sigma_start: float
    sigma_end: float
    sigma_last: float
    nfe: int


def noise_levels(model: nn.Module) -> np.ndarray:
    """σ_n = √((1 − ᾱ_n)/ᾱ_n) of the model's discrete times, float64 ``(N,)``."""
    alphas_cumprod = model.alphas_cumprod.double().cpu().numpy()
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def run_sampler(
    spec: SamplerSpec,
    model: nn.Module,
    denoiser: nn.Module,
    noise: torch.Tensor,
    steps: int,
    schedule: str = "normal",
    guidance: Guidance | None = None,
    seed: int = 0,
    meter: ModelMeter | None = None,
) -> SamplerRun:
    """Run ``spec`` for ``steps`` steps from the unit noise ``noise`` ``(B, ...)``: k-style samplers start at
    z = σ_0 · noise (their convention), the classes at x_T = noise (VP), i.e. z = √(1 + σ_start²) · noise.
    The global RNG is seeded with ``seed`` first (the stochastic samplers' default noise comes from it);
    ``meter`` (a new one if None) counts and times the model calls."""
    guidance = guidance or Guidance()
    meter = meter or ModelMeter(model)
    torch.manual_seed(seed)
    found = spec.load()
    with meter.active(), torch.no_grad():
        if spec.kind in FRONT_ENDS:
            return _run_front_end(spec, found, model, noise, steps, guidance, meter)
        extra = {"extra_args": guidance.k_arguments(), "disable": True, **spec.options}
        sigma_min, sigma_max = float(denoiser.sigma_min), float(denoiser.sigma_max)
        if spec.kind == "k":
            schedules = importlib.import_module(K_SAMPLERS).schedule_sigmas
            sigmas = schedules(schedule, steps, denoiser).to(noise.device)
            z_start = sigmas[0] * noise
            z = found(denoiser, z_start, sigmas, **extra)
            start, end, last = float(sigmas[0]), float(sigmas[-1]), float(sigmas[-2])
        else:
            z_start = sigma_max * noise
            counts = (steps,) if spec.kind == "dpm_fast" else ()
            z = found(denoiser, z_start, sigma_min, sigma_max, *counts, **extra)
            start, end, last = sigma_max, sigma_min, sigma_min
    return SamplerRun(z, z_start, start, end, last, meter.calls)


def _run_front_end(
    spec: SamplerSpec, cls: Any, model: nn.Module, noise: torch.Tensor, steps: int, guidance: Guidance,
    meter: ModelMeter,
) -> SamplerRun:
    sampler = cls(model)
    x, _ = sampler.sample(steps, noise.shape[0], tuple(noise.shape[1:]), x_T=noise, **guidance.front_end_arguments(),
                          **spec.options, **QUIET)  # fmt: skip
    levels = noise_levels(model)
    timesteps = getattr(sampler, "ddim_timesteps", None)
    first = int(timesteps[-1]) if spec.kind in ("ddim", "plms") else len(levels) - 1
    sigma_start, sigma_end = float(levels[first]), float(levels[0])
    z_start = noise * math.sqrt(1 + sigma_start**2)
    return SamplerRun(x * math.sqrt(1 + sigma_end**2), z_start, sigma_start, sigma_end, sigma_end, meter.calls)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------------
# Overhead
# --------------------------------------------------------------------------------------------------------


class GaussianEpsModel(nn.Module):
    """ε*(x_t, t) = √(1 − ᾱ_t)(x_t − √ᾱ_t m(c))/(ᾱ_t σ² + 1 − ᾱ_t) for data N(μ + m(c), σ²), with m(c) the mean
    of a tensor conditioning (SD's linear schedule; fractional t interpolates log ᾱ)."""

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

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        log_ab = self.alphas_cumprod.double().log()
        lo = t.double().floor().long().clamp(0, 999)
        w = t.double() - lo
        ab = torch.exp(log_ab[lo] * (1 - w) + log_ab[(lo + 1).clamp(max=999)] * w).to(x.dtype)
        ab = ab.view(-1, *([1] * (x.ndim - 1)))
        mean = self.mu if cond is None else self.mu + cond.reshape(cond.shape[0], -1).mean(1).view_as(ab)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mean) / (ab * self.sigma**2 + 1 - ab)


def overhead_table(
    device: torch.device, steps: int = 50, repeats: int = 3, shape: tuple[int, ...] = (4, 4, 64, 64)
) -> list[str]:
    """Markdown rows: each available sampler's time per step and model call, and the rest (its overhead), for
    ``steps`` steps (karras schedule for the k-samplers; DPM fast gets NFE = steps, DPM adaptive its default
    tolerances) with guidance 7.5; best of ``repeats``."""
    model = GaussianEpsModel(0.5, 0.5, device)
    denoiser = importlib.import_module(K_SAMPLERS).CompVisDenoiser(model)
    noise = torch.randn(shape, device=device)
    cond, uncond = torch.randn(shape[0], 77, 768, device=device), torch.zeros(shape[0], 77, 768, device=device)
    guidance = Guidance(cond, uncond, 7.5)
    rows = [
        "| sampler | steps | model calls | total ms/step | model ms/call | overhead ms/step | overhead ms/call |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    warm_up = next(s for s in sampler_specs() if s.function == "sample_euler")
    run_sampler(warm_up, model, denoiser, noise, steps, "karras", guidance)  # first-call costs out of the first row
    for spec in sampler_specs():
        if not spec.available():
            rows.append(f"| {spec.name} | – | – | – | – | – | – (not available) |")
            continue
        best: tuple[float, float, int] | None = None
        if spec.kind in ("ddim", "plms") and 1000 // steps * (steps - 1) + 1 > 999:
            rows.append(f"| {spec.name} | {steps} | – | – | – | – | – (uniform spacing refuses S = {steps}) |")
            continue
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            meter = ModelMeter(model)
            run = run_sampler(spec, model, denoiser, noise, steps, "karras", guidance, meter=meter)
            synchronize(device)
            total = time.perf_counter() - start
            if best is None or total < best[0]:
                best = (total, meter.seconds, run.nfe)
        total, model_seconds, calls = best
        run_steps = steps if spec.kind != "dpm_adaptive" else calls
        rows.append(
            f"| {spec.name} | {run_steps} | {calls} | {1e3 * total / run_steps:.2f} | {1e3 * model_seconds / calls:.2f}"
            f" | {1e3 * (total - model_seconds) / run_steps:.2f} | {1e3 * (total - model_seconds) / calls:.2f} |"
        )
    return rows


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def machine() -> str:
    """A one-line description of the machine and the torch build."""
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="+", choices=("overhead", "accuracy", "demo"),
                        default=["overhead", "accuracy", "demo"])  # fmt: skip
    parser.add_argument("--demo_ckpt", default=None,
                        help="a trained demo stage-2 checkpoint (configs/demo/txt2img_ldm.yaml); without it the "
                        "demo-config model with random weights is measured")  # fmt: skip
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"Machine: {machine()}\n")
    if "overhead" in args.only:
        print(f"## Sampler overhead ({device}, latents (4, 4, 64, 64), guidance 7.5, analytic model, 50 steps)\n")
        print("\n".join(overhead_table(device)))
    from bench import sampler_accuracy  # noqa: PLC0415 (it imports this module)

    if "accuracy" in args.only:
        print("\n".join(sampler_accuracy.analytic_report(device)))
    if "demo" in args.only:
        print("\n".join(sampler_accuracy.demo_report(device, args.demo_ckpt)))


if __name__ == "__main__":
    main()
