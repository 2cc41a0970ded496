"""The sampler benchmark's pieces on tiny configurations: the analytic model, the reference, the sweeps, the tables."""

from __future__ import annotations

import math

import pytest
import torch

from bench import sampler_accuracy as acc
from bench.samplers import GaussianEpsModel, Guidance, ModelMeter, overhead_table, run_sampler, sampler_specs
from ldm.models.diffusion.k_samplers import CompVisDenoiser


def spec(name: str):
    return next(s for s in sampler_specs() if s.name == name)


def test_mixture_posterior_mean_is_tweedies_formula():
    """x̂_0 = z + σ² ∇ log p_σ(z), the score taken by autograd of the noised mixture's log density."""
    model = acc.MixtureModel()
    z = (3 * torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).requires_grad_()
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    centres = model.means[:, None, None, :] + model.offsets(3, 3).unsqueeze(-1)
    var = model.variances[:, None, None, :] + sigma.reshape(-1, 1, 1, 1, 1) ** 2
    log_p = torch.logsumexp(
        model.log_weights[:, None, None, :] - (z.unsqueeze(-1) - centres) ** 2 / (2 * var) - 0.5 * torch.log(var), -1
    )
    (score,) = torch.autograd.grad(log_p.sum(), z)
    expected = z + sigma.reshape(-1, 1, 1, 1) ** 2 * score
    torch.testing.assert_close(model.posterior_mean(z.detach(), sigma), expected.detach(), rtol=0, atol=1e-12)


def test_mixture_apply_model_is_the_eps_of_the_denoiser():
    """Through CompVisDenoiser (σ -> fractional t -> σ) the model gives back the exact denoiser."""
    model = acc.MixtureModel()
    denoiser = CompVisDenoiser(model)
    z = 2 * torch.randn(3, 4, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.05, 1.3, 9.0], dtype=torch.float64)
    torch.testing.assert_close(denoiser(z, sigma), model.denoise(z, sigma), rtol=0, atol=1e-5)


def test_channel_quantiles_invert_the_mixture_cdf():
    model = acc.MixtureModel()
    u = torch.tensor([0.01, 0.3, 0.5, 0.9], dtype=torch.float64)
    z = model.channel_quantiles(u, 0.5, denoised=False)  # (4, 4)
    scales = (model.variances + 0.25).sqrt()
    cdf = (model.log_weights.exp()[:, None, :] * torch.special.ndtr((z[..., None] - model.means[:, None, :])
                                                                     / scales[:, None, :])).sum(-1)  # fmt: skip
    torch.testing.assert_close(cdf, u.expand(4, -1), rtol=0, atol=1e-12)
    # denoised quantiles are the denoiser of the noised ones (D is increasing)
    assert (model.channel_quantiles(u, 0.5, denoised=True).diff(dim=-1) > 0).all()


def test_probability_flow_matches_the_gaussian_closed_form():
    """For data N(μ, s²), D is affine and the flow keeps (z − μ)/√(s² + σ²): RK4 in log σ meets it."""
    mu, s = 0.4, 0.6

    def denoiser(z, sigma):
        return mu + s**2 / (s**2 + sigma.reshape(-1, 1) ** 2) * (z - mu)

    z0 = torch.randn(3, 5, dtype=torch.float64)
    out = acc.probability_flow(denoiser, z0, 14.6, 0.03, steps=100)
    expected = mu + math.sqrt(s**2 + 0.03**2) / math.sqrt(s**2 + 14.6**2) * (z0 - mu)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)  # RK4: 2e-8 at 100 steps


def test_reference_reproduces_itself_and_a_fine_heun_run_meets_it():
    bench = acc.mixture_bench(2, torch.device("cpu"))
    run = run_sampler(spec("Heun"), bench.model, bench.denoiser, bench.noise, 200, "karras")
    reference = bench.reference(run)
    finer = acc.Reference(bench.model.denoise, steps=2 * acc.REFERENCE_STEPS // 5)(run)
    assert acc.rms(acc.Reference(bench.model.denoise, steps=acc.REFERENCE_STEPS // 5)(run), finer) < 1e-7
    assert acc.rms(reference, finer) < 1e-7
    assert acc.rms(run.z, reference) < 1e-4  # Heun, 399 model calls
    assert run.nfe == 399 and run.sigma_end == 0 and run.sigma_start == pytest.approx(14.6146, abs=1e-4)


def test_error_sweep_error_falls_with_model_calls():
    bench = acc.mixture_bench(2, torch.device("cpu"))
    bench = acc.Bench(bench.model, bench.denoiser, bench.noise, bench.guidance, acc.Reference(bench.model.denoise,
                      steps=200))  # fmt: skip
    results = acc.error_sweep(bench, [spec("DPM++ 2M"), spec("DDIM (class)")], ["karras"], (5, 10, 20, 40))
    for key in (("DPM++ 2M", "karras"), ("DDIM (class)", "own")):
        errors = [results[key][n][0] for n in (5, 10, 20, 40)]
        assert errors == sorted(errors, reverse=True), (key, errors)
    # second order against first order: 8x the calls cut DPM++ 2M's error far more than DDIM's
    dpmpp, ddim = results[("DPM++ 2M", "karras")], results[("DDIM (class)", "own")]
    assert dpmpp[40][0] / dpmpp[5][0] < 0.5 * ddim[40][0] / ddim[5][0]
    table = acc.nfe_table(results, "karras", (5, 40))
    assert table[2].startswith("| DPM++ 2M | ") and len(table) == 3
    fewest = acc.fewest_calls(results, dpmpp[20][0])
    assert fewest[0] == (20, "DPM++ 2M, karras")


def test_distribution_sweep_stochastic_error_falls_and_floor_is_small():
    bench = acc.mixture_bench(32, torch.device("cpu"), seed=1)
    bench = acc.Bench(bench.model, bench.denoiser, bench.noise, bench.guidance, acc.Reference(bench.model.denoise,
                      steps=100))  # fmt: skip
    results, baselines = acc.distribution_sweep(bench, [spec("Euler a")], ["karras"], (4, 60))
    row = results[("Euler a", "karras")]
    assert row[60][0] < 0.5 * row[4][0]
    assert baselines["floor"] < 0.5 * row[4][0]


def test_model_meter_counts_and_restores():
    model = GaussianEpsModel(0.5, 0.5, torch.device("cpu"))
    meter = ModelMeter(model)
    with meter.active():
        run = run_sampler(spec("DPM++ 2M"), model, CompVisDenoiser(model), torch.randn(1, 1, 4, 4), 6, "karras",
                          Guidance(torch.ones(1, 2), torch.zeros(1, 2), 3.0))  # fmt: skip
    assert run.nfe == 6 and meter.calls == 6 and meter.seconds > 0
    assert "apply_model" not in vars(model)


def test_overhead_table_has_a_row_per_sampler():
    rows = overhead_table(torch.device("cpu"), steps=4, repeats=1, shape=(1, 4, 8, 8))
    assert len(rows) == 2 + len(sampler_specs())
    calls = {row.split(" | ")[0].lstrip("| "): row.split(" | ")[2] for row in rows[2:]}
    assert calls["DDIM (class)"] == "4" and calls["Heun"] == "7" and calls["PLMS (class)"] == "5"
