"""UniPC against the authors' LDM port (stored runs), diffusers' scheduler (live), closed forms and invariants.

- ``unipc_ldm/...`` cases of ``tests/refdata/ksamplers`` (the authors' ``UniPC.sample`` on the gmm-eps model,
  fractional model times 999, 899.1, ...): ``UniPCSampler.sample`` meets ``out`` and ``model_t``;
- diffusers' ``UniPCMultistepScheduler`` flow (integer timesteps, ending at σ = 0) is ``sample_unipc`` on
  diffusers' noise levels from z_T = x_T √(1 + σ_T²), run live when diffusers is installed;
- invariants: UniP-2 with B(h) = e^h − 1 and no corrector is DPM-Solver++(2M); order 1 without corrector is DDIM;
- closed forms: a point mass is sampled exactly by eps, x0 and v models, and the three parameterizations of
  one predictor give one sample.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from ldm.models.diffusion.dpm_solver.solver import sample_dpmpp_2m
from ldm.models.diffusion.schedule import DiscreteSchedule
from ldm.models.diffusion.uni_pc import UniPCSampler, sample_unipc
from ldm.models.diffusion.uni_pc.sampler import unipc_time_steps
from ldm.models.diffusion.uni_pc.solver import sample_unipc_multistep, step_orders
from tests.ksampler_refmodels import assert_matches_case, load_refdata, make_model
from tests.sampler_fakes import GaussianModel

QUIET = {"verbose": False, "disable_progress": True}
CASE_NAME = re.compile(r"unipc_ldm/(bh\d)/order(\d)/S(\d+)/scale([\d.]+)")
LDM_CASES = sorted(name for name in load_refdata()["cases"] if name.startswith("unipc_ldm/"))


class TimeRecorder:
    """Wraps a model; records the model time of batch element 0 at every ``apply_model`` call."""

    def __init__(self, model) -> None:
        self.inner = model
        self.times: list[float] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def apply_model(self, x, t, cond=None):
        self.times.append(float(torch.as_tensor(t).reshape(-1)[0]))
        return self.inner.apply_model(x, t, cond)


def guided_eps(model, x: torch.Tensor, t: torch.Tensor, scale: float) -> torch.Tensor:
    """The reference flows' ε: e_u + s (e_c − e_u) from one batch [uncond; cond], or e_c alone for s = 1."""
    common = load_refdata()["common"]
    if scale == 1.0:
        return model.apply_model(x, t, common["cond"])
    cond = torch.cat([common["uncond"], common["cond"]])
    e_u, e_c = model.apply_model(torch.cat([x, x]), torch.cat([t, t]), cond).chunk(2)
    return e_u + scale * (e_c - e_u)


# --------------------------------------------------------------------------------------------------------
# The authors' LDM port (stored)
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LDM_CASES)
def test_ldm_flow_matches_the_authors_port(name):
    case = load_refdata()["cases"][name]
    common = load_refdata()["common"]
    variant, order, steps, scale = CASE_NAME.fullmatch(name).groups()
    order, steps, scale = int(order), int(steps), float(scale)
    model = TimeRecorder(make_model("gmm-eps"))
    out, _ = UniPCSampler(model).sample(
        S=steps, batch_size=2, shape=(4, 8, 8), conditioning=common["cond"], x_T=common["noise_unit"],
        unconditional_guidance_scale=scale, unconditional_conditioning=common["uncond"] if scale != 1 else None,
        order=order, variant=variant, skip_type="time_uniform", lower_order_final=True, **QUIET,
    )  # fmt: skip
    assert_matches_case(out, case["out"], case["fp64_spread"])
    assert len(model.times) == steps  # NFE = S: no final denoising call, the corrector reuses the next call
    assert_matches_case(torch.tensor(model.times), case["model_t"], 0.0, what="model_t")


def test_the_default_options_are_the_authors_sampler():
    """``UniPCSampler`` defaults: bh1, order 3, time_uniform, lower_order_final (the authors' port)."""
    assert UniPCSampler.sample_options == {
        "order": 3, "variant": "bh1", "skip_type": "time_uniform", "lower_order_final": True,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# diffusers' flow (live)
# --------------------------------------------------------------------------------------------------------


def diffusers_run(order: int, steps: int, scale: float):
    """The README's ``unipc_diffusers`` recipe: ``(x_0, timesteps, sigmas)``."""
    diffusers = pytest.importorskip("diffusers")
    common = load_refdata()["common"]
    scheduler = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        solver_order=order, prediction_type="epsilon", predict_x0=True, solver_type="bh2", lower_order_final=True,
        timestep_spacing="linspace", final_sigmas_type="zero",
    )  # fmt: skip
    acp = common["alphas_cumprod"].clone()
    scheduler.alphas_cumprod = acp
    scheduler.alpha_t, scheduler.sigma_t = acp.sqrt(), (1 - acp).sqrt()
    scheduler.lambda_t = scheduler.alpha_t.log() - scheduler.sigma_t.log()
    scheduler.sigmas = ((1 - acp) / acp).sqrt()
    scheduler.set_timesteps(steps)
    model = make_model("gmm-eps")
    x = common["noise_unit"].clone()
    for t in scheduler.timesteps:
        x = scheduler.step(guided_eps(model, x, t.expand(2), scale), t, x).prev_sample
    return x, scheduler.timesteps.clone(), scheduler.sigmas.clone()


class EpsDenoiser:
    """D(z, σ) = z − σ ε̂(z / √(1 + σ²), t(σ)) for the gmm-eps model, t(σ) from the schedule; records t."""

    def __init__(self, scale: float) -> None:
        self.model = make_model("gmm-eps")
        self.schedule = DiscreteSchedule(self.model.alphas_cumprod)
        self.scale = scale
        self.times: list[float] = []

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = self.schedule.timestep_from_noise_level(sigma.double()).float()
        self.times.append(float(t[0]))
        s = sigma.view(-1, 1, 1, 1)
        return z - s * guided_eps(self.model, z / (1 + s**2).sqrt(), t, self.scale)


@pytest.mark.parametrize("scale", [1.0, 5.0])
@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("order", [2, 3])
def test_k_style_reproduces_the_diffusers_flow(order, steps, scale):
    reference, timesteps, sigmas = diffusers_run(order, steps, scale)
    denoiser = EpsDenoiser(scale)
    z_T = load_refdata()["common"]["noise_unit"] * math.sqrt(1 + float(sigmas[0]) ** 2)
    out = sample_unipc(denoiser, z_T, sigmas, disable=True, order=order, variant="bh2")
    assert_matches_case(out, reference, 0.0)
    torch.testing.assert_close(torch.tensor(denoiser.times, dtype=torch.float64), timesteps.double(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("order", [2, 3])
def test_diffusers_flow_through_the_compvis_denoiser(order):
    """The scripts' path: ``CompVisDenoiser`` (σ → model time) under A1111's CFG on the denoised output, which at
    fixed σ is the same guidance as on ε."""
    denoisers = pytest.importorskip("ldm.models.diffusion.k_samplers.denoisers")
    if not hasattr(denoisers, "CompVisDenoiser"):
        pytest.skip("CompVisDenoiser is not written yet")
    from tests.ksampler_refmodels import CFG

    reference, _, sigmas = diffusers_run(order, 10, 5.0)
    common = load_refdata()["common"]
    model = CFG(denoisers.CompVisDenoiser(make_model("gmm-eps")))
    extra_args = {"cond": common["cond"], "uncond": common["uncond"], "cond_scale": 5.0}
    z_T = common["noise_unit"] * math.sqrt(1 + float(sigmas[0]) ** 2)
    out = sample_unipc(model, z_T, sigmas, extra_args=extra_args, disable=True, order=order)
    assert_matches_case(out, reference, 0.0)


# --------------------------------------------------------------------------------------------------------
# Invariants
# --------------------------------------------------------------------------------------------------------


def ldm_grid(steps: int, skip_type: str = "time_uniform"):
    """``(model, predict(x, i), times, alphas, sigmas, x_T)`` for the guided gmm-eps model on a UniPC grid."""
    model = make_model("gmm-eps")
    schedule = DiscreteSchedule(model.alphas_cumprod)
    times = unipc_time_steps(schedule, steps, skip_type)

    def predict(x: torch.Tensor, i: int) -> torch.Tensor:
        t = torch.full((x.shape[0],), float(times[i]))
        a, s = float(schedule.alpha(times[i])), float(schedule.sigma(times[i]))
        return (x - s * guided_eps(model, x, t, 5.0)) / a

    return schedule, predict, times, load_refdata()["common"]["noise_unit"]


def test_unip2_bh2_without_corrector_is_dpm_solver_pp_2m():
    """With B(h) = e^h − 1 and ρ = ½, eq. (3) is DPM-Solver++(2M)'s multistep update (r = −h_{i−1}/h_i); both
    start and (10 < 15 steps) end first order."""
    schedule, predict, times, x_T = ldm_grid(10)
    unipc = sample_unipc_multistep(
        predict, x_T, schedule.alpha(times), schedule.sigma(times), order=2, variant="bh2",
        disable_corrector=range(10), disable=True,
    )  # fmt: skip
    dpmpp = sample_dpmpp_2m(lambda x, tau: predict(x, int((times - tau).abs().argmin())), x_T, times, schedule,
                            disable=True)
    torch.testing.assert_close(unipc, dpmpp, rtol=0, atol=2e-5)


def test_order_one_without_corrector_is_ddim():
    """DDIM (Song et al. 2021, eq. 12, η = 0): x_{i+1} = α_{i+1} x̂_0 + σ_{i+1} ε̂ with ε̂ = (x_i − α_i x̂_0)/σ_i."""
    schedule, predict, times, x_T = ldm_grid(8, "logSNR")
    alphas, sigmas = schedule.alpha(times), schedule.sigma(times)
    x = x_T
    for i in range(8):
        x0 = predict(x, i)
        eps = (x - float(alphas[i]) * x0) / float(sigmas[i])
        x = float(alphas[i + 1]) * x0 + float(sigmas[i + 1]) * eps
    for variant in ("bh1", "bh2"):
        unipc = sample_unipc_multistep(predict, x_T, alphas, sigmas, order=1, variant=variant,
                                       disable_corrector=range(8), disable=True)
        torch.testing.assert_close(unipc, x, rtol=0, atol=2e-5)


def gaussian_flow_error(order: int, variant: str, steps: int, corrector: bool) -> float:
    """max|x − x*| after ``steps`` logSNR steps on N(0.5, 0.5²) data, x* the exact probability-flow map
    x* = α_0 μ + s_0 (x_T − α_T μ)/s_T with s² = α² σ_data² + σ² (from model time 999 to 0)."""
    model = GaussianModel(mu=0.5, sigma=0.5)
    schedule = DiscreteSchedule(model.alphas_cumprod)
    times = unipc_time_steps(schedule, steps, "logSNR")
    alphas, sigmas = schedule.alpha(times), schedule.sigma(times)
    spread = (alphas**2 * model.sigma**2 + sigmas**2).sqrt()
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    exact = float(alphas[-1]) * model.mu + float(spread[-1] / spread[0]) * (x_T - float(alphas[0]) * model.mu)

    def predict(x: torch.Tensor, i: int) -> torch.Tensor:
        eps = model.apply_model(x, torch.full((x.shape[0],), float(times[i])))
        return (x - float(sigmas[i]) * eps) / float(alphas[i])

    out = sample_unipc_multistep(predict, x_T, alphas, sigmas, order=order, variant=variant,
                                 disable_corrector=() if corrector else range(steps), disable=True)
    return (out - exact).abs().max().item()


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2])
def test_the_corrector_raises_the_order_of_accuracy(order, variant):
    """UniP-p alone converges at order p, UniP-p + UniC-p at order p + 1 (the paper's Theorem 3.3): the error
    ratio from 20 to 40 steps is ≈ 2^p without and ≈ 2^(p+1) with the corrector."""
    observed = {
        corrector: math.log2(gaussian_flow_error(order, variant, 20, corrector)
                             / gaussian_flow_error(order, variant, 40, corrector))
        for corrector in (False, True)
    }  # fmt: skip
    assert order - 0.2 < observed[False] < order + 0.3, observed
    assert observed[True] > order + 0.8, observed


def test_step_orders_warm_up_and_lower_at_the_end():
    assert step_orders(6, 3, True, False) == [1, 2, 3, 3, 2, 1]
    assert step_orders(6, 3, False, False) == [1, 2, 3, 3, 3, 3]
    assert step_orders(2, 3, False, True) == [1, 1]  # a step to σ = 0 is x = x̂_0


def test_nfe_and_callbacks_of_the_k_style_sampler():
    """n steps, n model calls at σ_0..σ_{n−1}; the record of step i holds the state at σ_i."""
    denoiser = EpsDenoiser(1.0)
    sigmas = torch.tensor([14.6, 6.0, 2.0, 0.7, 0.2, 0.0])
    x = load_refdata()["common"]["noise_unit"] * sigmas[0]
    records = []
    out = sample_unipc(denoiser, x, sigmas, callback=records.append, disable=True, order=3)
    assert len(denoiser.times) == 5
    assert [float(r["sigma"]) for r in records] == pytest.approx(sigmas[:-1].tolist())
    assert [r["i"] for r in records] == list(range(5))
    torch.testing.assert_close(records[0]["x"], x)
    torch.testing.assert_close(out, records[-1]["denoised"])  # the step to σ = 0 is x = x̂_0


def test_sample_logs_intermediates_and_calls_back_every_step():
    model = GaussianModel(mu=0.2, sigma=0.5)
    steps_seen = []
    samples, inter = UniPCSampler(model).sample(
        7, 2, (1, 4, 4), callback=steps_seen.append, log_every_t=3, generator=torch.Generator().manual_seed(0),
        **QUIET,
    )  # fmt: skip
    assert steps_seen == list(range(7))
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 4  # x_T, after steps 3 and 6, and the last
    torch.testing.assert_close(inter["x_inter"][-1], samples)


# --------------------------------------------------------------------------------------------------------
# Closed forms: every parameterization
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("skip_type", ["time_uniform", "logSNR", "time_quadratic"])
@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_point_mass_is_sampled_exactly(parameterization, skip_type):
    """x̂_0 = μ at every point, so every difference D_k vanishes and eq. (1) is the exact flow:
    x_0 = √ᾱ_0 μ + √(1 − ᾱ_0) ε(x_T), ε(x_T) = (x_T − √ᾱ_999 μ)/√(1 − ᾱ_999)."""
    model = GaussianModel(mu=0.7, sigma=0.0, parameterization=parameterization)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    a_start, a_end = float(model.alphas_cumprod[999]), float(model.alphas_cumprod[0])
    eps = (x_T - math.sqrt(a_start) * model.mu) / math.sqrt(1 - a_start)
    expected = math.sqrt(a_end) * model.mu + math.sqrt(1 - a_end) * eps
    for variant, order in [("bh1", 3), ("bh2", 2), ("bh2", 3)]:
        samples, inter = UniPCSampler(model).sample(
            10, 2, (1, 8, 8), x_T=x_T, order=order, variant=variant, skip_type=skip_type, log_every_t=1, **QUIET
        )
        torch.testing.assert_close(samples, expected, rtol=0, atol=5e-5)
        torch.testing.assert_close(inter["pred_x0"][-1], torch.full_like(x_T, model.mu), rtol=0, atol=5e-5)


@pytest.mark.parametrize("parameterization", ["x0", "v"])
def test_parameterizations_give_the_eps_model_samples(parameterization):
    """One predictor in three encodings (x_t = α x̂_0 + σ ε̂ exactly): one sample, up to float32 rounding."""
    x_T = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    options = {"order": 3, "variant": "bh2", "skip_type": "logSNR", **QUIET}
    reference = UniPCSampler(GaussianModel(mu=0.3, sigma=0.8)).sample(10, 4, (1, 6, 6), x_T=x_T, **options)[0]
    model = GaussianModel(mu=0.3, sigma=0.8, parameterization=parameterization)
    other = UniPCSampler(model).sample(10, 4, (1, 6, 6), x_T=x_T, **options)[0]
    torch.testing.assert_close(other, reference, rtol=0, atol=1e-4)


def test_gmm_x0_model_samples_the_authors_reference():
    """The stored eps-model run, reproduced by the x0-model of the same mixture (guidance on x̂_0 = on ε̂)."""
    name = "unipc_ldm/bh2/order2/S10/scale5"
    case, common = load_refdata()["cases"][name], load_refdata()["common"]
    out, _ = UniPCSampler(make_model("gmm-x0")).sample(
        S=10, batch_size=2, shape=(4, 8, 8), conditioning=common["cond"], x_T=common["noise_unit"],
        unconditional_guidance_scale=5.0, unconditional_conditioning=common["uncond"], order=2, variant="bh2",
        **QUIET,
    )  # fmt: skip
    assert_matches_case(out, case["out"], case["fp64_spread"])


# --------------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------------


def test_unknown_keywords_name_the_closest_valid_one():
    sampler = UniPCSampler(GaussianModel())
    with pytest.raises(TypeError, match="did you mean 'order'"):
        sampler.sample(2, 1, (1, 2, 2), ordr=2, **QUIET)
    with pytest.raises(TypeError, match="did you mean 'lower_order_final'"):
        sampler.sample(2, 1, (1, 2, 2), lower_order_finale=False, **QUIET)
    with pytest.raises(TypeError, match="did you mean 'variant'"):
        sample_unipc(EpsDenoiser(1.0), torch.zeros(1, 4, 8, 8), torch.tensor([1.0, 0.0]), varient="bh1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"variant": "vary_coeff"}, "variant"),
        ({"order": 4}, "order"),
        ({"skip_type": "karras"}, "skip_type"),
        ({"eta": 0.5}, "eta"),
        ({"mask": torch.ones(1, 1, 2, 2), "x0": torch.zeros(1, 1, 2, 2)}, "mask/x0"),
    ],
)
def test_unsupported_options_raise_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        UniPCSampler(GaussianModel()).sample(3, 1, (1, 2, 2), **options, **QUIET)
