"""Guidance rescale φ (Lin et al. 2024, §3.4) against a hand computation, φ = 0 as the identity, and the sampling
flags ``--guidance_rescale`` / ``--timestep_spacing``."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.named_samplers import NamedSampler
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.sampler_core import rescale_guidance
from ldm.sampling_cli import SamplingStart, spacing_options
from tests.sampler_fakes import GaussianModel


class SpreadModel(GaussianModel):
    """The Gaussian-data predictor with its output scaled by 1 + m(cond) (so guidance changes its spread)."""

    def apply_model(self, x, t, cond=None):
        spread = 1.0 + self.data_mean(cond, x.shape[0]).float().view(-1, *([1] * (x.ndim - 1))) - self.mu
        return super().apply_model(x, t, None) * spread


def test_rescale_matches_a_hand_computation():
    gen = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    scale, phi = 7.5, 0.7
    cfg = uncond + scale * (cond - uncond)
    out = rescale_guidance(cfg, cond, phi)
    for b in range(2):  # numpy, per sample: std over C, H, W
        c, g = cond[b].numpy().astype(np.float64), cfg[b].numpy().astype(np.float64)
        rescaled = g * c.std(ddof=1) / g.std(ddof=1)
        np.testing.assert_allclose(out[b].numpy(), phi * rescaled + (1 - phi) * g, rtol=1e-5, atol=1e-5)
    full = rescale_guidance(cfg, cond, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    assert torch.equal(rescale_guidance(cfg, cond, 0.0), cfg)


@pytest.mark.parametrize("sampler_class", [DDIMSampler, PLMSSampler])
@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_phi_zero_is_exactly_todays_sampler(sampler_class, parameterization):
    model = SpreadModel(parameterization=parameterization)
    cond, uncond = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), -0.5)

    def run(**extra):
        samples, _ = sampler_class(model).sample(
            S=5, batch_size=2, shape=(1, 4, 4), conditioning=cond, unconditional_conditioning=uncond,
            unconditional_guidance_scale=5.0, verbose=False, disable_progress=True,
            generator=torch.Generator().manual_seed(1), **extra,
        )
        return samples

    today = run()
    assert torch.equal(today, run(guidance_rescale=0.0, timestep_spacing="uniform"))
    rescaled = run(guidance_rescale=0.7)
    assert torch.isfinite(rescaled).all() and not torch.allclose(today, rescaled)


def test_named_ddim_takes_the_spacing_through_sampler_options():
    sampler = NamedSampler(GaussianModel(parameterization="v"), "ddim")
    sampler.sample(S=4, batch_size=1, shape=(1, 2, 2), verbose=False, disable_progress=True,
                   sampler_options={"timestep_spacing": "trailing"})
    np.testing.assert_array_equal(sampler.legacy.ddim_timesteps, [249, 499, 749, 999])


def test_sampling_flags_parse_with_original_defaults():
    from scripts.txt2img import parse_args

    defaults = parse_args([])
    assert defaults.timestep_spacing == "uniform" and defaults.guidance_rescale == 0.0
    opt = parse_args(["--timestep_spacing", "trailing", "--guidance_rescale", "0.7"])
    assert opt.timestep_spacing == "trailing" and opt.guidance_rescale == 0.7
    for argv in (["--guidance_rescale", "1.5"], ["--timestep_spacing", "leading"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


class RecordingSampler:
    """Records the keywords of ``sample`` / ``img2img``; ``legacy`` as a NamedSampler for DDIM has it."""

    def __init__(self, legacy):
        self.legacy, self.calls = legacy, []

    def sample(self, **kwargs):
        self.calls.append(("sample", kwargs))
        return torch.zeros((kwargs["batch_size"], *kwargs["shape"])), {}

    def img2img(self, *args, **kwargs):
        self.calls.append(("img2img", kwargs))
        return args[0]


def _opt(**overrides) -> argparse.Namespace:
    values = {"scale": 5.0, "ddim_eta": None, "ddim_steps": 4, "strength": 0.5, "sampler": "ddim",
              "timestep_spacing": "uniform", "guidance_rescale": 0.0}
    return argparse.Namespace(**{**values, **overrides})


def test_draw_passes_the_flags_and_keeps_the_original_call_by_default():
    ddim = DDIMSampler(GaussianModel())
    sampler = RecordingSampler(ddim)
    start = SamplingStart(shape=(1, 2, 2))
    start.draw(_opt(), sampler, None, None, 2)
    start.draw(_opt(timestep_spacing="trailing", guidance_rescale=0.7), sampler, None, None, 2)
    (_, plain), (_, flagged) = sampler.calls
    assert "sampler_options" not in plain and plain["guidance_rescale"] == 0.0
    assert flagged["sampler_options"] == {"timestep_spacing": "trailing"} and flagged["guidance_rescale"] == 0.7
    SamplingStart(init_latent=torch.zeros(2, 1, 2, 2)).draw(_opt(guidance_rescale=0.7), sampler, None, None, 2)
    assert sampler.calls[-1][1]["guidance_rescale"] == 0.7


def test_spacing_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="--sampler ddim or plms"):
        spacing_options(_opt(timestep_spacing="trailing", sampler="euler"), RecordingSampler(None))
    assert spacing_options(_opt(), RecordingSampler(None)) == {}


def test_img2img_takes_the_spacing_and_the_rescale():
    """img2img draws pass ``--timestep_spacing`` on; DDIM / PLMS img2img then walk the trailing steps (strength 1
    starts at t = T − 1, the pure-noise step of a zero-terminal-SNR model) and apply guidance rescale."""
    recording = RecordingSampler(DDIMSampler(GaussianModel()))
    SamplingStart(init_latent=torch.zeros(2, 1, 2, 2)).draw(_opt(timestep_spacing="trailing"), recording, None,
                                                            None, 2)
    assert recording.calls[-1] == ("img2img", {**recording.calls[-1][1],
                                               "sampler_options": {"timestep_spacing": "trailing"}})
    x0, noise = torch.zeros(1, 1, 4, 4), torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    cond, uncond = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), -0.5)
    for name in ("ddim", "plms"):
        sampler = NamedSampler(SpreadModel(parameterization="v"), name)

        def run(sampler=sampler, **options):
            return sampler.img2img(x0, 1.0, 4, cond, 5.0, uncond, noise=noise, disable_progress=True, **options)

        uniform = run()
        trailing = run(sampler_options={"timestep_spacing": "trailing"})
        np.testing.assert_array_equal(sampler.legacy.ddim_timesteps, [249, 499, 749, 999])  # strength 1: all 4
        assert not torch.allclose(uniform, trailing)
        rescaled = run(sampler_options={"timestep_spacing": "trailing"}, guidance_rescale=0.7)
        assert torch.isfinite(rescaled).all() and not torch.allclose(trailing, rescaled)
