"""Sampler accuracy per model evaluation: the table of the DPM-Solver and UniPC papers, for every sampler here.

Every run starts from the same unit noise ξ. A sampler integrates from its first noise level σ_start (z = σ_0 ξ
for the k-style samplers, z = √(1 + σ²) ξ for the classes that start from VP noise x_T = ξ) down to its last one,
in the variance-exploding view z = x_0 + σ ε (:class:`bench.samplers.SamplerRun`). The error is measured against
the exact probability-flow map between the same two levels:

- deterministic samplers: the RMS difference to the **reference**, the probability-flow ODE
  dz/d log σ = z − D(z, σ) solved with 1000 classical Runge-Kutta (RK4) steps uniform in log σ from the same z
  (4000 model calls; a sampler that ends at σ = 0 ends with x = D(z, σ_last), and so does the reference, from
  its own z at σ_last). The reference, not the sampler, starts where the sampler starts, so the table shows
  the solver's error and not where DDIM's schedule begins (t = 951 for 20 steps) or that DDIM, PLMS, UniPC's
  class and DPM fast stop at σ_min without a final denoising step (their error is that of z at σ_min);
- stochastic samplers (ancestral, SDE, DDIM η = 1): no two of them integrate the same path, so their law is
  compared instead: the 1-Wasserstein distance, per channel, between their samples and the reference samples
  (the deterministic reference from the same noise), averaged over channels. Two independent sets of reference
  samples are as far apart as the "floor" row says (the sampling noise of the estimate).

Models: the Gaussian mixture of ``tests/refdata/ksamplers/README.md`` §1 (every element an independent
3-component 1-D mixture, exact posterior mean as the model: :class:`MixtureModel`), computed in float64; and the
demo model (``configs/demo/txt2img_ldm.yaml``) with guidance 5 on eight demo prompts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bench.samplers import Guidance, SamplerRun, SamplerSpec, machine, run_sampler, sampler_specs

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = ("normal", "karras", "exponential")
#: The NFE columns of the printed tables; the "fewest calls" table searches the budgets of NFE_SEARCH.
NFE_COLUMNS = (5, 8, 10, 15, 20, 30, 50)
NFE_SEARCH = (3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15, 16, 18, 20, 23, 26, 30, 35, 40, 45, 50)
THRESHOLDS = (3e-2, 1e-2, 3e-3, 1e-3, 3e-4)
REFERENCE_STEPS = 1000
#: A denoiser D(z, σ, **extra) -> x̂_0: z ``(B, ...)``, σ ``(B,)``.
Denoiser = Callable[..., torch.Tensor]


# --------------------------------------------------------------------------------------------------------
# The analytic model
# --------------------------------------------------------------------------------------------------------

MIXTURE_MEANS = ((-1.2, 0.0, 1.0), (-0.6, 0.4, 1.5), (-1.5, -0.3, 0.8), (-0.9, 0.5, 1.3))
MIXTURE_STDS = ((0.25, 0.35, 0.20), (0.30, 0.20, 0.30), (0.20, 0.30, 0.25), (0.30, 0.25, 0.20))
MIXTURE_WEIGHTS = ((0.3, 0.5, 0.2), (0.25, 0.25, 0.5), (0.4, 0.2, 0.4), (0.2, 0.6, 0.2))


class MixtureModel(nn.Module):
    """The exact ε-predictor of 4-channel data whose every element is an independent Gaussian mixture,
    p(x_0[c, h, w]) = Σ_k w_ck N(m_ck + o_chw, s_ck²), o_chw = 0.25 cos(0.7 h + 1.3 w + 2.1 c), on SD's linear
    schedule (``tests/refdata/ksamplers/README.md`` §1, without the conditioning shift).

    In the VE view z = x_0 + σ ε the posterior mean is x̂_0 = Σ_k r_k (μ_k + s_k²/(s_k² + σ²)(z − μ_k)),
    μ_k = m_ck + o_chw, r = softmax_k(log w_k − (z − μ_k)²/(2 v_k) − ½ log v_k), v_k = s_k² + σ²; ``apply_model``
    returns ε̂ = (z − x̂_0)/σ at x_t = z/√(1 + σ²), σ of t by log-σ interpolation. Float64 inside.
    """

    parameterization = "eps"

    def __init__(self) -> None:
        super().__init__()
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.num_timesteps = 1000
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        self.register_buffer("alphas_cumprod_prev", previous.float())
        acp = self.alphas_cumprod.double()
        self.register_buffer("log_sigmas", 0.5 * torch.log((1 - acp) / acp))
        self.register_buffer("means", torch.tensor(MIXTURE_MEANS, dtype=torch.float64))
        self.register_buffer("variances", torch.tensor(MIXTURE_STDS, dtype=torch.float64) ** 2)
        self.register_buffer("log_weights", torch.tensor(MIXTURE_WEIGHTS, dtype=torch.float64).log())
        self._offsets: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def offsets(self, height: int, width: int) -> torch.Tensor:
        """o_chw ``(4, H, W)``, float64 (computed once per size)."""
        key = (height, width, self.device)
        if key not in self._offsets:
            self._offsets[key] = self._cosine_offsets(height, width)
        return self._offsets[key]

    def _cosine_offsets(self, height: int, width: int) -> torch.Tensor:
        ranges = (torch.arange(n, dtype=torch.float64, device=self.device) for n in (4, height, width))
        c, h, w = torch.meshgrid(*ranges, indexing="ij")
        return 0.25 * torch.cos(0.7 * h + 1.3 * w + 2.1 * c)

    def noise_level(self, t: torch.Tensor) -> torch.Tensor:
        """σ at model times ``t`` ``(B,)`` (clamped to [0, 999]), log σ linear between steps; float64."""
        t = t.double().clamp(0, self.num_timesteps - 1)
        low = t.floor().long().clamp(max=self.num_timesteps - 2)
        frac = t - low
        return torch.exp((1 - frac) * self.log_sigmas[low] + frac * self.log_sigmas[low + 1])

    def posterior_mean(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x̂_0 = E[x_0 | z] for z ``(B, 4, H, W)`` at noise levels ``sigma`` ``(B,)``; float64."""
        z = z.double().unsqueeze(-1)  # (B, 4, H, W, 1)
        centres = self.means[:, None, None, :] + self.offsets(z.shape[2], z.shape[3]).unsqueeze(-1)  # (4, H, W, K)
        noise_var = sigma.double().reshape(-1, 1, 1, 1, 1) ** 2  # (B, 1, 1, 1, 1)
        return self._mixture_posterior(z, centres, self.variances[:, None, None, :],
                                       self.log_weights[:, None, None, :], noise_var)  # fmt: skip

    @staticmethod
    def _mixture_posterior(z: torch.Tensor, centres: torch.Tensor, prior_var: torch.Tensor,
                           log_weights: torch.Tensor, noise_var: torch.Tensor | float) -> torch.Tensor:  # fmt: skip
        """Σ_k r_k (μ_k + s_k²/v_k (z − μ_k)) over the last dim K (all arguments broadcast against ``(..., K)``)."""
        variances = prior_var + noise_var
        logits = log_weights - (z - centres) ** 2 / (2 * variances) - 0.5 * torch.log(variances)
        return (logits.softmax(-1) * (centres + prior_var / variances * (z - centres))).sum(-1)

    def channel_quantiles(self, u: torch.Tensor, sigma: float, denoised: bool) -> torch.Tensor:
        """Quantiles ``(4, n)`` at levels ``u`` ``(n,)`` or ``(4, n)`` of each channel's law with the position
        offsets removed: the exact marginal Z ~ Σ_k w_k N(m_k, s_k² + σ²) at ``sigma``, or with ``denoised``
        the law of D(Z, σ) (D is increasing in z, so its quantiles are D of Z's). Z's quantiles by bisection of
        the mixture CDF."""
        u = u.double().to(self.device)
        scales = (self.variances + sigma**2).sqrt()[:, None, :]  # (4, 1, K)
        weights, centres = self.log_weights.exp()[:, None, :], self.means[:, None, :]
        low = torch.full(torch.broadcast_shapes((4, 1), u.shape), -20.0, dtype=torch.float64, device=self.device)
        high = -low
        for _ in range(80):
            mid = 0.5 * (low + high)
            cdf = (weights * torch.special.ndtr((mid.unsqueeze(-1) - centres) / scales)).sum(-1)
            below = cdf < u
            low, high = torch.where(below, mid, low), torch.where(below, high, mid)
        z = 0.5 * (low + high)
        if not denoised:
            return z
        return self._mixture_posterior(z.unsqueeze(-1), centres, self.variances[:, None, :],
                                       self.log_weights[:, None, :], sigma**2)  # fmt: skip

    def denoise(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The exact denoiser D(z, σ) = :meth:`posterior_mean` in ``z``'s dtype (the reference's model)."""
        return self.posterior_mean(z, sigma).to(z.dtype)

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        sigma = self.noise_level(t.reshape(-1).expand(x.shape[0]))
        z = x.double() * torch.sqrt(1 + sigma**2).reshape(-1, 1, 1, 1)
        return ((z - self.posterior_mean(z, sigma)) / sigma.reshape(-1, 1, 1, 1)).to(x.dtype)


# --------------------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------------------


def probability_flow(
    denoiser: Denoiser,
    z: torch.Tensor,
    sigma_from: float,
    sigma_to: float,
    steps: int = REFERENCE_STEPS,
    extra_args: dict[str, Any] | None = None,
) -> torch.Tensor:
    """z at ``sigma_to`` > 0 on the probability-flow ODE through ``z`` ``(B, ...)`` at ``sigma_from``:
    dz/ds = z − D(z, e^s) in s = log σ (Karras et al. 2022, eq. 4, with σ dz/dσ), ``steps`` RK4 steps uniform
    in s (4 model calls each)."""
    extra = extra_args or {}
    ones = z.new_ones(z.shape[0])

    def slope(state: torch.Tensor, s: float) -> torch.Tensor:
        return state - denoiser(state, math.exp(s) * ones, **extra)

    h = (math.log(sigma_to) - math.log(sigma_from)) / steps
    for i in range(steps):
        s = math.log(sigma_from) + i * h
        k1 = slope(z, s)
        k2 = slope(z + 0.5 * h * k1, s + 0.5 * h)
        k3 = slope(z + 0.5 * h * k2, s + 0.5 * h)
        k4 = slope(z + h * k3, s + h)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z


class Reference:
    """The exact map between a run's first and last noise level (:func:`probability_flow`, then D at σ_last
    when the run ends at σ = 0), cached by start point and levels."""

    def __init__(self, denoiser: Denoiser, extra_args: dict[str, Any] | None = None, steps: int = REFERENCE_STEPS):
        self.denoiser, self.extra, self.steps = denoiser, extra_args or {}, steps
        self.cache: dict[tuple[float, ...], torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, run: SamplerRun) -> torch.Tensor:
        key = (run.sigma_start, run.sigma_last, run.sigma_end, float(run.z_start.reshape(-1)[0]))
        if key not in self.cache:
            z = probability_flow(self.denoiser, run.z_start, run.sigma_start, run.sigma_last, self.steps, self.extra)
            if run.sigma_end == 0:
                z = self.denoiser(z, z.new_full((z.shape[0],), run.sigma_last), **self.extra)
            self.cache[key] = z
        return self.cache[key]


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def wasserstein_to_law(samples: torch.Tensor, quantiles: torch.Tensor, offsets: torch.Tensor) -> float:
    """Mean over channels of the 1-Wasserstein distance between the empirical law of ``samples`` ``(B, C, H, W)``
    less the per-position ``offsets`` ``(C, H, W)`` and a law given by its ``quantiles`` ``(C, n)`` at the
    mid-ranks (i − ½)/n, n = B·H·W: mean_i |x_(i) − Q((i − ½)/n)| (the sorted coupling)."""
    centred = (samples.double() - offsets).transpose(0, 1).reshape(samples.shape[1], -1)
    return float((centred.sort(-1).values - quantiles).abs().mean())


def mid_ranks(n: int) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


# --------------------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """What a sweep runs on: the model, its denoiser, the unit noise, the conditioning and the reference."""

    model: nn.Module
    denoiser: nn.Module
    noise: torch.Tensor
    guidance: Guidance
    reference: Reference


def schedules_of(spec: SamplerSpec, schedules: Sequence[str]) -> tuple[str, ...]:
    return tuple(schedules) if spec.takes_schedule else ("own",)


def _try_run(spec: SamplerSpec, bench: Bench, nfe: int, schedule: str, seed: int = 0) -> SamplerRun | None:
    """The run of ``spec`` within ``nfe`` model calls, or None where its step rule has no such step count (DDIM's
    and PLMS's uniform spacing refuses some S)."""
    try:
        return run_sampler(spec, bench.model, bench.denoiser, bench.noise, spec.steps_for(nfe),
                           schedule if schedule != "own" else "normal", bench.guidance, seed)  # fmt: skip
    except ValueError:
        return None


def error_sweep(
    bench: Bench, specs: Sequence[SamplerSpec], schedules: Sequence[str], nfes: Sequence[int]
) -> dict[tuple[str, str], dict[int, tuple[float, int]]]:
    """``{(sampler, schedule): {nfe budget: (RMS error to the reference, model calls used)}}`` for the
    deterministic ``specs`` (a budget a sampler cannot use in full is run with the most steps that fit)."""
    results: dict[tuple[str, str], dict[int, tuple[float, int]]] = {}
    for spec in specs:
        for schedule in schedules_of(spec, schedules):
            row = results.setdefault((spec.name, schedule), {})
            for nfe in nfes:
                run = _try_run(spec, bench, nfe, schedule)
                if run is not None:
                    row[nfe] = (rms(run.z, bench.reference(run)), run.nfe)
    return results


def distribution_sweep(
    bench: Bench, specs: Sequence[SamplerSpec], schedules: Sequence[str], nfes: Sequence[int]
) -> tuple[dict[tuple[str, str], dict[int, tuple[float, int]]], dict[str, float]]:
    """W1 of each run's samples to the model's exact law at the run's end (:meth:`MixtureModel.channel_quantiles`:
    the data law, noised to σ_last and denoised there when the run ends at σ = 0 as every k-sampler does, else
    noised to σ_end): ``({(sampler, schedule): {nfe: (W1, model calls)}}, baselines)``. ``baselines``: the
    "floor" (exact samples of that law, the estimate's own sampling noise) and the "ODE limit" (the 1000-step
    reference samples, whose law differs by the prior mismatch z_T ~ N(0, σ_max²) that an ODE keeps)."""
    model: MixtureModel = bench.model  # type: ignore[assignment]
    batch, _, height, width = bench.noise.shape
    offsets, ranks = model.offsets(height, width), mid_ranks(batch * height * width)
    targets: dict[tuple[float, float], torch.Tensor] = {}

    def distance(run: SamplerRun) -> float:
        key = (run.sigma_end, run.sigma_last)
        if key not in targets:
            targets[key] = model.channel_quantiles(ranks, run.sigma_last, denoised=run.sigma_end == 0)
        return wasserstein_to_law(run.z, targets[key], offsets)

    euler = next(s for s in sampler_specs() if s.function == "sample_euler")
    anchor = run_sampler(euler, model, bench.denoiser, bench.noise, 2, "karras")
    exact = torch.rand(batch, 4, height, width, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    law = model.channel_quantiles(exact.transpose(0, 1).reshape(4, -1), anchor.sigma_last, True)
    exact_samples = law.reshape(4, batch, height, width).transpose(0, 1) + offsets
    baselines = {"floor": distance(replace(anchor, z=exact_samples)),
                 "ODE limit": distance(replace(anchor, z=bench.reference(anchor)))}  # fmt: skip
    results: dict[tuple[str, str], dict[int, tuple[float, int]]] = {}
    for spec in specs:
        for schedule in schedules_of(spec, schedules):
            row = results.setdefault((spec.name, schedule), {})
            for nfe in nfes:
                run = _try_run(spec, bench, nfe, schedule, seed=nfe)
                if run is not None:
                    row[nfe] = (distance(run), run.nfe)
    return results, baselines


def adaptive_rows(bench: Bench, rtols: Sequence[float] = (0.1, 0.05, 0.01, 0.001)) -> list[str]:
    """DPM adaptive at several relative tolerances: model calls used and RMS error."""
    spec = next((s for s in sampler_specs() if s.kind == "dpm_adaptive"), None)
    if spec is None or not spec.available():
        return ["DPM adaptive: not available."]
    rows = ["| DPM adaptive rtol | model calls | RMS error |", "|---:|---:|---:|"]
    for rtol in rtols:
        tuned = SamplerSpec(spec.name, spec.kind, spec.function, spec.module, {**spec.options, "rtol": rtol})
        run = run_sampler(tuned, bench.model, bench.denoiser, bench.noise, 0, guidance=bench.guidance)
        rows.append(f"| {rtol:g} | {run.nfe} | {rms(run.z, bench.reference(run)):.1e} |")
    return rows


# --------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------


def nfe_table(results: dict[tuple[str, str], dict[int, tuple[float, int]]], schedule: str,
              nfes: Sequence[int] = NFE_COLUMNS) -> list[str]:  # fmt: skip
    """Markdown rows: one per sampler run on ``schedule``, the error at each NFE budget (the calls actually
    used in brackets where fewer)."""
    rows = ["| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---:|" * len(nfes)]
    for (name, run_schedule), row in results.items():
        if run_schedule != schedule:
            continue
        cells = [f"{row[n][0]:.1e}" + (f" ({row[n][1]})" if row[n][1] != n else "") if n in row else "–" for n in nfes]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def fewest_calls(
    results: dict[tuple[str, str], dict[int, tuple[float, int]]], threshold: float
) -> list[tuple[int, str]]:
    """``[(model calls, "sampler, schedule")]`` sorted: the fewest calls at which each run's error is at most
    ``threshold`` and stays so at every larger budget measured."""
    found = []
    for (name, schedule), row in results.items():
        budgets = sorted(row)
        for i, budget in enumerate(budgets):
            if all(row[b][0] <= threshold for b in budgets[i:]):
                found.append((row[budget][1], f"{name}, {schedule}"))
                break
    return sorted(found)


def fewest_calls_table(results: dict[tuple[str, str], dict[int, tuple[float, int]]],
                       thresholds: Sequence[float] = THRESHOLDS, top: int = 3) -> list[str]:  # fmt: skip
    rows = ["| RMS error ≤ | fewest model calls (sampler, schedule) |", "|---:|---|"]
    for threshold in thresholds:
        best = fewest_calls(results, threshold)[:top]
        rows.append(f"| {threshold:.0e} | " + "; ".join(f"{n}: {what}" for n, what in best) + " |")
    return rows


# --------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------


def deterministic_specs() -> list[SamplerSpec]:
    return [s for s in sampler_specs() if not s.stochastic and s.kind != "dpm_adaptive" and s.available()]


def stochastic_specs() -> list[SamplerSpec]:
    return [s for s in sampler_specs() if s.stochastic and s.available()]


def missing_note() -> list[str]:
    missing = [s.name for s in sampler_specs() if not s.available()]
    return [f"\nNot available (not measured): {', '.join(missing)}."] if missing else []


def mixture_bench(batch: int, device: torch.device, seed: int = 0) -> Bench:
    from ldm.models.diffusion.k_samplers import CompVisDenoiser

    model = MixtureModel().to(device)
    denoiser = CompVisDenoiser(model)
    noise = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return Bench(model, denoiser, noise.to(device), Guidance(), Reference(model.denoise))


def analytic_report(device: torch.device, batch: int = 16, distribution_batch: int = 512) -> list[str]:
    """The analytic model's tables: RMS error per NFE for each schedule, the fewest-calls table, DPM adaptive,
    and the stochastic samplers' W1 per NFE."""
    bench = mixture_bench(batch, device)
    results = error_sweep(bench, deterministic_specs(), SCHEDULES, NFE_SEARCH)
    lines = [f"\n## Sampler error per model evaluation: Gaussian-mixture model, exact denoiser ({machine()})\n",
             f"RMS error to the {REFERENCE_STEPS}-step RK4 reference, same noise, {batch} x 4 x 8 x 8 float64 "
             "samples; budget columns (calls used in brackets where fewer)."]  # fmt: skip
    for schedule in (*SCHEDULES, "own"):
        title = "own steps (the classes and DPM fast)" if schedule == "own" else f"schedule {schedule}"
        lines += [f"\n### {title}\n", *nfe_table(results, schedule)]
    lines += ["\n### Fewest model calls to reach an RMS error (NFE 3-50)\n", *fewest_calls_table(results)]
    lines += ["\n### DPM adaptive\n", *adaptive_rows(bench)]
    dist_bench = mixture_bench(distribution_batch, device, seed=1)
    compared = [s for s in deterministic_specs() if s.function in ("sample_euler", "sample_dpmpp_2m")]
    dist, baselines = distribution_sweep(dist_bench, stochastic_specs() + compared, SCHEDULES, NFE_COLUMNS)
    lines += [f"\n### Stochastic samplers: W1 to the exact law ({distribution_batch} x 4 x 8 x 8 samples)\n",
              "Mean over channels of the 1-Wasserstein distance to the model's exact law at the run's end "
              f"(Euler and DPM++ 2M for comparison). Floor (exact samples): {baselines['floor']:.1e}; "
              f"the {REFERENCE_STEPS}-step ODE reference: {baselines['ODE limit']:.1e}."]  # fmt: skip
    for schedule in (*SCHEDULES, "own"):
        lines += [f"\nschedule {schedule}:\n", *nfe_table(dist, schedule)]
    return lines + missing_note()


# --------------------------------------------------------------------------------------------------------
# The demo model
# --------------------------------------------------------------------------------------------------------

DEMO_PROMPTS = (
    "a red circle", "a small blue square at the top left", "a large green triangle", "a yellow circle at the bottom",
    "a purple square", "a small red triangle at the right", "a blue circle at the center", "a large yellow square",
)  # fmt: skip


def demo_model(ckpt: str | None, device: torch.device) -> tuple[nn.Module, str]:
    """The demo stage-2 model (``configs/demo/txt2img_ldm.yaml``) with ``ckpt``'s weights, or, without one, its
    random initialisation with the UNet's zero-initialised output layer redrawn (else ε̂ ≡ 0 and every sampler
    is exact). Returns the model and a description."""
    from omegaconf import OmegaConf

    from ldm.inference import load_model_from_config

    config = OmegaConf.load(ROOT / "configs/demo/txt2img_ldm.yaml")
    config.model.params.first_stage_config.params.ckpt_path = None
    torch.manual_seed(0)
    model, step = load_model_from_config(config, ckpt, device)
    if ckpt is None:
        out = model.model.diffusion_model.out[-1]
        nn.init.normal_(out.weight, std=0.05)
        what = "random weights (demo config, output layer redrawn: std 0.05)"
    else:
        what = f"trained demo checkpoint {Path(ckpt).name} (global step {step})"
    return model.eval(), what


def demo_bench(ckpt: str | None, device: torch.device, batch: int = 8, scale: float = 5.0,
               reference_steps: int = 250) -> tuple[Bench, str]:  # fmt: skip
    from ldm.models.diffusion.k_samplers import CompVisDenoiser

    model, what = demo_model(ckpt, device)
    prompts = [DEMO_PROMPTS[i % len(DEMO_PROMPTS)] for i in range(batch)]
    with torch.no_grad():
        cond, uncond = model.get_learned_conditioning(prompts), model.get_learned_conditioning(batch * [""])
    guidance = Guidance(cond, uncond, scale)
    denoiser = CompVisDenoiser(model)
    noise = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
    return Bench(model, denoiser, noise, guidance, Reference(denoiser, guidance.k_arguments(), reference_steps)), what


def demo_report(device: torch.device, ckpt: str | None, schedules: Sequence[str] = ("karras", "normal"),
                nfes: Sequence[int] = (5, 8, 10, 15, 20, 30),
                reference_steps: int = REFERENCE_STEPS) -> list[str]:  # fmt: skip
    """The demo model's RMS error per NFE (float32 latents, guidance 5) for the deterministic samplers but DDIM and
    PLMS (whose start moves with S: one 4000-call reference per S), and the reference's self-consistency (the
    RMS difference to a reference of half the steps)."""
    bench, what = demo_bench(ckpt, device, reference_steps=reference_steps)
    specs = [s for s in deterministic_specs() if s.kind not in ("ddim", "plms")]
    with torch.no_grad():
        results = error_sweep(bench, specs, schedules, nfes)
        anchor = run_sampler(specs[0], bench.model, bench.denoiser, bench.noise, 2, "karras", bench.guidance)
        half = Reference(bench.denoiser, bench.guidance.k_arguments(), reference_steps // 2)(anchor)
    spread = rms(half, bench.reference(anchor))
    lines = [f"\n## Sampler error per model evaluation: demo model, {what} ({machine()})\n",
             f"RMS error (latent units; the reference samples' std is {float(bench.reference(anchor).std()):.2f}) "
             f"to the {reference_steps}-step RK4 reference, guidance 5, {bench.noise.shape[0]} x 4 x 8 x 8 float32 "
             f"latents; the reference differs from a {reference_steps // 2}-step one by {spread:.1e}."]  # fmt: skip
    for schedule in (*schedules, "own"):
        lines += [f"\n### schedule {schedule}\n", *nfe_table(results, schedule, nfes)]
    lines += ["\n### Fewest model calls to reach an RMS error\n", *fewest_calls_table(results)]
    return lines
