"""Samplers by name (ldm/models/diffusion/named_samplers.py): the name table, schedule suffixes, the front-end's
``sample`` against calling each sampler directly, seeded noise, and img2img at a fraction of the schedule.

The model is the exact predictor of Gaussian data (``tests.sampler_fakes.GaussianModel``), which records the batch
size of every model call.
"""

from __future__ import annotations

import pytest
import torch

from ldm.inference import make_sampler
from ldm.models.diffusion import k_samplers
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.models.diffusion.named_samplers import (
    SAMPLERS,
    Family,
    NamedSampler,
    resolve_sampler,
    sampler_choice,
)
from ldm.models.diffusion.plms import PLMSSampler
from tests.sampler_fakes import GaussianModel

SHAPE = (2, 4, 4)
QUIET = {"verbose": False, "disable_progress": True}
#: AUTOMATIC1111's names, the aliases asked for, and the k-diffusion function each one runs.
EXPECTED = {
    "Euler": (["euler"], "sample_euler"),
    "Euler a": (["euler_a", "euler_ancestral"], "sample_euler_ancestral"),
    "Heun": (["heun"], "sample_heun"),
    "DPM2": (["dpm_2"], "sample_dpm_2"),
    "DPM2 a": (["dpm_2_a", "dpm_2_ancestral"], "sample_dpm_2_ancestral"),
    "LMS": (["lms"], "sample_lms"),
    "DPM++ 2S a": (["dpmpp_2s_a", "dpmpp_2s_ancestral"], "sample_dpmpp_2s_ancestral"),
    "DPM++ 2M": (["dpmpp_2m"], "sample_dpmpp_2m"),
    "DPM++ SDE": (["dpmpp_sde"], "sample_dpmpp_sde"),
    "DPM++ 2M SDE": (["dpmpp_2m_sde"], "sample_dpmpp_2m_sde"),
    "DPM++ 2M SDE Heun": (["dpmpp_2m_sde_heun"], "sample_dpmpp_2m_sde"),
    "DPM++ 3M SDE": (["dpmpp_3m_sde"], "sample_dpmpp_3m_sde"),
    "DPM fast": (["dpm_fast"], "sample_dpm_fast"),
    "DPM adaptive": (["dpm_adaptive"], "sample_dpm_adaptive"),
    "UniPC": (["unipc"], "sample_unipc"),
    "DDIM": (["ddim"], "DDIMSampler"),
    "PLMS": (["plms"], "PLMSSampler"),
    "DPM-Solver++": (["dpm_solver"], "DPMSolverSampler"),
}
K_READY = all(hasattr(k_samplers, name) for name in ("CompVisDenoiser", "schedule_sigmas", "sample_euler"))
NOISE_READY = all(hasattr(k_samplers, name) for name in ("default_noise_sampler", "sample_euler_ancestral",
                                                         "sample_dpmpp_2m_sde"))
needs_k = pytest.mark.skipif(not K_READY, reason="the k_samplers functions are not in this checkout yet")
needs_noise = pytest.mark.skipif(not NOISE_READY, reason="the noisy k-samplers are not in this checkout yet")


@pytest.fixture
def model() -> GaussianModel:
    return GaussianModel(mu=0.5, sigma=0.5)


def _guidance(batch: int = 2) -> dict:
    """A conditioning that moves the data mean, its unconditional counterpart and a guidance scale."""
    return {"conditioning": torch.full((batch, 3), 0.3), "unconditional_conditioning": torch.zeros(batch, 3),
            "unconditional_guidance_scale": 3.0}


# ----------------------------------------------------------------------------------------------------------------
# names


def test_every_name_and_alias_resolves_to_its_sampler():
    assert list(SAMPLERS) == list(EXPECTED)
    for name, (aliases, function) in EXPECTED.items():
        for spelling in (name, name.upper(), name.lower(), f"  {name} ", *aliases, *(a.upper() for a in aliases)):
            entry, schedule = resolve_sampler(spelling)
            assert (entry.name, entry.function, schedule) == (name, function, None), spelling
    assert SAMPLERS["DPM++ 2M SDE Heun"].options == {"solver_type": "heun"}
    assert {n for n, e in SAMPLERS.items() if e.discard_penultimate_sigma} == {"DPM2", "DPM2 a", "DPM++ 3M SDE"}


def test_sampler_functions_are_the_exported_ones():
    from ldm.models.diffusion import uni_pc

    assert SAMPLERS["UniPC"].load() is uni_pc.sample_unipc
    for name, (_, function) in EXPECTED.items():
        entry = SAMPLERS[name]
        if entry.family is not Family.LEGACY and hasattr(k_samplers, function):
            assert entry.load() is getattr(k_samplers, function)


@pytest.mark.parametrize(("spelling", "name", "schedule"), [
    ("DPM++ 2M Karras", "DPM++ 2M", "karras"),
    ("DPM++ SDE Karras", "DPM++ SDE", "karras"),
    ("Euler a Exponential", "Euler a", "exponential"),
    ("dpm++ 2m sde heun karras", "DPM++ 2M SDE Heun", "karras"),
    ("dpmpp_2m_karras", "DPM++ 2M", "karras"),
    ("euler_ancestral_polyexponential", "Euler a", "polyexponential"),
    ("LMS ddim uniform", "LMS", "ddim_uniform"),
    ("heun_ddim_uniform", "Heun", "ddim_uniform"),
    ("Euler Uniform", "Euler", "normal"),
    ("DPM2 a Simple", "DPM2 a", "simple"),
])  # fmt: skip
def test_a_schedule_suffix_selects_the_schedule(spelling, name, schedule):
    entry, chosen = resolve_sampler(spelling)
    assert (entry.name, chosen) == (name, schedule)


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match=r"unknown sampler 'Eular a'; did you mean 'Euler a'"):
        resolve_sampler("Eular a")
    with pytest.raises(ValueError, match=r"did you mean 'DPM\+\+ 2M'"):
        resolve_sampler("dpmpp2m")
    with pytest.raises(ValueError, match=r"unknown sampler 'DPM\+\+ 2M Karas'.*valid names: Euler, Euler a"):
        resolve_sampler("DPM++ 2M Karas")
    with pytest.raises(ValueError, match=r"unknown schedule 'karas'; did you mean 'karras'"):
        sampler_choice("Euler", "karas")


def test_schedule_choices_are_checked_together(model):
    assert sampler_choice("DPM++ 2M Karras", "Karras")[1] == "karras"
    with pytest.raises(ValueError, match="selects the 'karras' schedule but schedule 'exponential'"):
        sampler_choice("DPM++ 2M Karras", "exponential")
    for name in ("DDIM", "PLMS", "dpm_solver", "DPM fast", "DPM adaptive"):
        with pytest.raises(ValueError, match="spaces its steps itself"):
            sampler_choice(name, "karras")
        assert sampler_choice(name, "normal")[1] == "normal"
    with pytest.raises(ValueError, match="spaces its steps itself"):
        NamedSampler(model, "DDIM Karras")


def test_unknown_keywords_raise_type_error_with_a_suggestion(model):
    sampler = make_sampler("ddim", model)
    with pytest.raises(TypeError, match=r"NamedSampler.sample\(\) .* 'unconditional_guidance_scal'; did you mean "
                                        r"'unconditional_guidance_scale'"):
        sampler.sample(2, 1, SHAPE, unconditional_guidance_scal=7.5)
    with pytest.raises(TypeError, match=r"NamedSampler.img2img\(\) .* 'strenght'"):
        sampler.img2img(torch.zeros(1, *SHAPE), 0.5, 4, strenght=0.5)
    with pytest.raises(TypeError, match=r"'shedule'; did you mean 'schedule'"):
        NamedSampler(model, "Euler", shedule="karras")
    with pytest.raises(TypeError, match=r"'skip_typ'; did you mean 'skip_type'"):
        make_sampler("dpm_solver", model).sample(2, 1, SHAPE, sampler_options={"skip_typ": "logSNR"}, **QUIET)


# ----------------------------------------------------------------------------------------------------------------
# DDIM, PLMS, DPM-Solver++ through the front-end


@pytest.mark.parametrize(("name", "cls", "eta"), [("DDIM", DDIMSampler, 0.0), ("ddim", DDIMSampler, 1.0),
                                                  ("PLMS", PLMSSampler, None), ("dpm_solver", DPMSolverSampler, None)])
def test_legacy_names_equal_their_classes(model, name, cls, eta):
    x_T = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    keywords = {"x_T": x_T, **_guidance(), **QUIET}
    direct, _ = cls(model).sample(5, 2, SHAPE, eta=eta or 0.0, generator=torch.Generator().manual_seed(1), **keywords)
    named, _ = make_sampler(name, model).sample(5, 2, SHAPE, eta=eta, generator=torch.Generator().manual_seed(1),
                                                **keywords)
    torch.testing.assert_close(named, direct, rtol=0, atol=0)


def test_eta_for_a_deterministic_sampler_is_an_error(model):
    with pytest.raises(ValueError, match="ddim_eta must be 0 for PLMS"):
        make_sampler("plms", model).sample(2, 1, SHAPE, eta=0.5, **QUIET)
    with pytest.raises(ValueError, match=r"DPMSolverSampler .* does not support eta"):
        make_sampler("dpm_solver", model).sample(2, 1, SHAPE, eta=0.5, **QUIET)
    with pytest.raises(ValueError, match="DDIM takes no s_noise or noise_sampler"):
        make_sampler("ddim", model).sample(2, 1, SHAPE, s_noise=0.9, **QUIET)


def test_ddim_img2img_is_stochastic_encode_then_decode(model):
    x0, noise = torch.full((2, *SHAPE), 0.4), torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(2))
    guidance = _guidance()
    named = make_sampler("DDIM", model).img2img(x0, 0.6, 10, noise=noise, **guidance, disable_progress=True)
    direct = DDIMSampler(model)
    direct.make_schedule(10, verbose=False)
    z = direct.stochastic_encode(x0, torch.full((2,), 6), noise=noise)
    expected = direct.decode(z, guidance["conditioning"], 6, guidance["unconditional_guidance_scale"],
                             guidance["unconditional_conditioning"], disable_progress=True)
    torch.testing.assert_close(named, expected, rtol=0, atol=0)


@pytest.mark.parametrize(("name", "calls"), [("DDIM", 6), ("PLMS", 7), ("DPM-Solver++", 6)])
def test_legacy_img2img_strength(model, name, calls):
    """Strength 0 returns the input; 0.6 of 10 steps takes 6 model calls (PLMS: one more for its first step);
    the point mass μ noised and denoised by the exact predictor comes back to μ."""
    sampler = make_sampler(name, model)
    x0 = torch.full((2, *SHAPE), 0.5)
    assert sampler.img2img(x0, 0.0, 10) is x0
    assert model.calls == []
    point_mass = GaussianModel(mu=0.5, sigma=0.0)
    out = make_sampler(name, point_mass).img2img(x0, 0.6, 10, generator=torch.Generator().manual_seed(0),
                                                 disable_progress=True)
    assert len(point_mass.calls) == calls
    assert (out - 0.5).abs().mean() < 0.05  # what is left is √(1 − ᾱ_0) ε ≈ 0.03 ε, where the runs end
    with pytest.raises(ValueError, match=r"strength 1.5 is outside \[0, 1\]"):
        sampler.img2img(x0, 1.5, 10)
    with pytest.raises(ValueError, match="takes no sampler_options.*'order'"):
        sampler.img2img(x0, 0.6, 10, sampler_options={"order": 2})


# ----------------------------------------------------------------------------------------------------------------
# the k-diffusion samplers


def _direct(model, function, sigmas, x_T, guidance, **keywords):
    denoiser = k_samplers.CompVisDenoiser(model)
    extra = {"cond": guidance["conditioning"], "uncond": guidance["unconditional_conditioning"],
             "cond_scale": guidance["unconditional_guidance_scale"]}
    return function(denoiser, x_T * sigmas[0], sigmas, extra_args=extra, disable=True, **keywords)


@needs_k
@pytest.mark.parametrize(("name", "schedule", "function"), [
    ("Euler", "normal", "sample_euler"), ("DPM++ 2M Karras", "karras", "sample_dpmpp_2m"),
    ("LMS Exponential", "exponential", "sample_lms"), ("heun_karras", "karras", "sample_heun"),
])  # fmt: skip
def test_front_end_equals_the_sampler_function(model, name, schedule, function):
    x_T = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3))
    guidance = _guidance()
    sampler = make_sampler(name, model)
    samples, intermediates = sampler.sample(6, 2, SHAPE, x_T=x_T, **guidance, **QUIET)
    sigmas = k_samplers.schedule_sigmas(schedule, 6, k_samplers.CompVisDenoiser(model))
    torch.testing.assert_close(sampler.sigmas(6), sigmas.float(), rtol=0, atol=0)
    expected = _direct(model, getattr(k_samplers, function), sigmas, x_T, guidance)
    torch.testing.assert_close(samples, expected, rtol=0, atol=0)
    assert intermediates["x_inter"][0] is x_T and len(intermediates["pred_x0"]) == 2  # x_T and the last step


@needs_k
def test_dpm2_drops_the_smallest_nonzero_sigma(model):
    full = k_samplers.schedule_sigmas("karras", 7, k_samplers.CompVisDenoiser(model)).float()
    sigmas = make_sampler("DPM2 Karras", model).sigmas(6)
    assert len(sigmas) == 7
    torch.testing.assert_close(sigmas, torch.cat([full[:-2], full[-1:]]), rtol=0, atol=0)


@needs_k
def test_x_T_starts_at_sigma_max_and_guidance_is_one_doubled_call(model):
    """With the point mass μ, Euler is exact: any start gives μ + m(c) guided at scale w, each step one call of
    batch 2B."""
    point_mass = GaussianModel(mu=0.5, sigma=0.0)
    guidance = _guidance()
    samples, _ = make_sampler("euler", point_mass).sample(4, 2, SHAPE, **guidance, **QUIET)
    assert point_mass.calls == [4] * 4
    torch.testing.assert_close(samples, torch.full_like(samples, 0.5 + 3.0 * 0.3), rtol=0, atol=1e-4)


@needs_noise
@pytest.mark.parametrize("name", ["Euler a", "DPM++ 2M SDE", "DPM++ SDE Karras", "DPM2 a"])
def test_a_generator_reproduces_noisy_samplers(model, name):
    sampler = make_sampler(name, model)

    def run(seed: int, **keywords) -> torch.Tensor:
        return sampler.sample(4, 2, SHAPE, generator=torch.Generator().manual_seed(seed), **keywords, **QUIET)[0]

    first = run(5)
    torch.testing.assert_close(run(5), first, rtol=0, atol=0)
    assert not torch.equal(run(6), first)
    x_T = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(9))
    assert not torch.equal(run(5, x_T=x_T), run(6, x_T=x_T)), "the per-step noise follows the generator too"
    deterministic = run(5, x_T=x_T, eta=0.0)
    torch.testing.assert_close(run(6, x_T=x_T, eta=0.0), deterministic, rtol=0, atol=0)


@needs_noise
def test_euler_a_noise_is_drawn_from_the_generator(model):
    """Euler a = sample_euler_ancestral with x_T and the noise sampler drawing from one generator."""
    generator = torch.Generator().manual_seed(11)
    samples, _ = make_sampler("Euler a", model).sample(5, 2, SHAPE, generator=generator, **QUIET)
    replay = torch.Generator().manual_seed(11)
    x_T = torch.randn(2, *SHAPE, generator=replay)
    sigmas = k_samplers.schedule_sigmas("normal", 5, k_samplers.CompVisDenoiser(model))
    noise = k_samplers.default_noise_sampler(x_T, generator=replay)
    expected = _direct(model, k_samplers.sample_euler_ancestral, sigmas, x_T,
                       {"conditioning": None, "unconditional_conditioning": None, "unconditional_guidance_scale": 1.0},
                       noise_sampler=noise)
    torch.testing.assert_close(samples, expected, rtol=0, atol=0)


@needs_k
def test_deterministic_samplers_refuse_noise_settings(model):
    with pytest.raises(ValueError, match="DPM\\+\\+ 2M is deterministic and takes no eta"):
        make_sampler("DPM++ 2M", model).sample(2, 1, SHAPE, eta=1.0, **QUIET)
    make_sampler("DPM++ 2M", model).sample(2, 1, SHAPE, eta=0.0, **QUIET)
    with pytest.raises(ValueError, match="mask/x0"):
        make_sampler("Euler", model).sample(2, 1, SHAPE, mask=torch.ones(1, *SHAPE), x0=torch.zeros(1, *SHAPE))


@needs_k
@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M Karras", pytest.param("Euler a", marks=needs_noise)])
def test_k_img2img_takes_the_last_steps_of_the_schedule(model, name):
    x0 = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5))
    sampler = make_sampler(name, model)
    assert sampler.img2img(x0, 0.0, 10, noise=noise) is x0
    for strength, steps in ((0.35, 3), (1.0, 10)):
        model.calls.clear()
        out = sampler.img2img(x0, strength, 10, noise=noise, generator=torch.Generator().manual_seed(0),
                              disable_progress=True)
        assert len(model.calls) == steps
        sigmas = sampler.sigmas(10)[10 - steps:]
        function = SAMPLERS[sampler.entry.name].load()
        keywords = {}
        if sampler.entry.family is Family.ANCESTRAL:
            generator = torch.Generator().manual_seed(0)
            keywords["noise_sampler"] = k_samplers.default_noise_sampler(x0, generator=generator)
        expected = function(k_samplers.CompVisDenoiser(model), x0 + sigmas[0] * noise, sigmas, disable=True,
                            extra_args={"cond": None, "uncond": None, "cond_scale": 1.0}, **keywords)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    sigma_max = float(k_samplers.CompVisDenoiser(model).sigma_max)
    assert float(sampler.sigmas(10)[0]) == pytest.approx(sigma_max, rel=1e-5)  # strength 1 starts at σ_max


def _available(name: str) -> bool:
    entry = SAMPLERS[name]
    try:
        return entry.family is Family.LEGACY or entry.load() is not None
    except NotImplementedError:
        return False


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_takes_a_point_mass_to_its_guided_mean(name):
    """Data = the point mass μ: x̂_0 = μ + w·m(c) at every step, so each sampler ends there, up to the noise left at
    its last level (DPM fast/adaptive stop at σ_min ≈ 0.03; the DDIM-schedule samplers at √(1 − ᾱ_0) ≈ 0.03)."""
    if not _available(name):
        pytest.skip(f"{SAMPLERS[name].function} is not in this checkout yet")
    point_mass = GaussianModel(mu=0.5, sigma=0.0)
    samples, _ = make_sampler(name, point_mass).sample(6, 2, SHAPE, generator=torch.Generator().manual_seed(0),
                                                       **_guidance(), **QUIET)
    ends_at_zero = SAMPLERS[name].family not in (Family.LEGACY, Family.DPM_SOLVER)
    expected = torch.full_like(samples, 0.5 + 3.0 * 0.3)
    torch.testing.assert_close(samples, expected, rtol=0, atol=1e-3 if ends_at_zero else 0.15)


class SpreadByConditioning(GaussianModel):
    """The Gaussian model's output scaled by 1 + mean(cond) per sample, so guidance changes its spread."""

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        out = super().apply_model(x, t, cond)
        return out * (1 + cond.flatten(1).mean(1)).view(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M", "UniPC", "DDIM"])
def test_guidance_rescale_reaches_the_named_samplers(name):
    """φ = 0 is the plain guided run bit for bit; φ > 0 changes it (k path: through CompVisDenoiser)."""
    model = SpreadByConditioning(mu=0.3, sigma=0.7)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    c, uc = torch.randn(2, 1, 8), torch.zeros(2, 1, 8)

    def run(**kwargs):
        return NamedSampler(model, name).sample(
            4, 2, (1, 4, 4), conditioning=c, unconditional_conditioning=uc, unconditional_guidance_scale=5.0,
            x_T=x_T, verbose=False, disable_progress=True, **kwargs,
        )[0]  # fmt: skip

    assert torch.equal(run(), run(guidance_rescale=0.0))
    assert not torch.allclose(run(), run(guidance_rescale=0.7))
