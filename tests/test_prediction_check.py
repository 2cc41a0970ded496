"""The ε-or-v probe behind the scripts' SD 2.x config warning, on the exact predictors of Gaussian data.

For data N(μ, σ²) and x_t = s·n at the last timestep, the exact outputs are affine in n with slopes
ε*: s²/D, x̂_0*: a·σ²·s/D and v* = a·ε* − s·x̂_0* (D = a²σ² + s²), so β has a closed form for each kind.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.inference import load_sampling_model
from ldm.prediction_check import (
    noise_regression,
    probe_parameterization,
    warn_on_parameterization_mismatch,
)
from tests.sampler_fakes import GaussianModel

MU, SIGMA = 0.5, 0.5


class FrozenOpenCLIPEmbedder(torch.nn.Module):
    """Stands in for the SD 2.x text encoder (the probe keys on the conditioning stage's class name)."""


class ProbedModel(GaussianModel):
    """The Gaussian-data model with the attributes the probe reads from a LatentDiffusion."""

    def __init__(self, output_kind: str, declared: str, text_encoder: torch.nn.Module | None = None) -> None:
        super().__init__(mu=MU, sigma=SIGMA, parameterization=output_kind, declared=declared)
        self.image_size, self.channels = 32, 4
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1 - self.alphas_cumprod).sqrt())
        self.cond_stage_model = text_encoder

    def get_learned_conditioning(self, prompts: list[str]) -> None:
        return None


def closed_form_beta(model: GaussianModel, kind: str) -> float:
    """The slope of the exact ``kind`` output in n at t = T−1 (the constant part is orthogonal to n on average)."""
    ab = float(model.alphas_cumprod[-1].double())
    a, s = math.sqrt(ab), math.sqrt(1 - ab)
    slope_residual = s / (ab * SIGMA**2 + 1 - ab)  # d residual / d n
    eps, x0 = s * slope_residual, a * SIGMA**2 * slope_residual
    return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[kind]


@pytest.mark.parametrize("kind", ["eps", "v", "x0"])
def test_noise_regression_meets_the_closed_form(kind):
    model = ProbedModel(kind, kind)
    assert noise_regression(model) == pytest.approx(closed_form_beta(model, kind), abs=0.02)


def test_probe_tells_eps_from_v():
    assert probe_parameterization(ProbedModel("eps", "eps")) == "eps"
    assert probe_parameterization(ProbedModel("v", "v")) == "v"


def test_an_untrained_looking_model_gets_no_verdict():
    model = ProbedModel("eps", "eps")
    model.apply_model = lambda x, t, cond=None: 0.5 * x / model.sqrt_one_minus_alphas_cumprod[-1]
    assert probe_parameterization(model) is None


@pytest.mark.parametrize(("outputs", "declared", "named"), [("v", "eps", "v2-inference-v.yaml"),
                                                             ("eps", "v", "v2-inference.yaml")])
def test_a_checkpoint_of_the_other_kind_is_named_with_its_config(outputs, declared, named, caplog):
    model = ProbedModel(outputs, declared, FrozenOpenCLIPEmbedder())
    with caplog.at_level(logging.WARNING, logger="ldm.prediction_check"):
        assert warn_on_parameterization_mismatch(model, "model.ckpt", "my.yaml") == outputs
    (record,) = caplog.records
    assert named in record.getMessage() and "my.yaml" in record.getMessage()
    assert f"--parameterization {declared}" in record.getMessage()


def test_a_matching_checkpoint_or_another_model_family_says_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="ldm.prediction_check"):
        assert warn_on_parameterization_mismatch(ProbedModel("v", "v", FrozenOpenCLIPEmbedder()), "m", "c") == "v"
        v1_like = ProbedModel("v", "eps", torch.nn.Identity())
        assert warn_on_parameterization_mismatch(v1_like, "m", "c") is None
    assert not caplog.records
    assert v1_like.calls == []


@pytest.mark.parametrize("forced", ["v", "x0"])
def test_the_parameterization_flag_replaces_the_config_value(forced, tmp_path):
    config = OmegaConf.load(Path(__file__).parent / "configs" / "tiny_ldm.yaml")
    config.model.params.first_stage_config.params.ckpt_path = None
    OmegaConf.save(config, tmp_path / "tiny.yaml")
    opt = argparse.Namespace(config=str(tmp_path / "tiny.yaml"), ckpt=None, use_ema=False, parameterization=forced)
    assert load_sampling_model(opt, torch.device("cpu")).parameterization == forced


@pytest.mark.parametrize(("precision", "expected"), [("full", torch.float32), ("autocast", torch.float16)])
def test_full_precision_keeps_a_use_fp16_unet_in_float32(precision, expected, tmp_path):
    """SD 2.x configs set ``use_fp16: true`` (a float32 UNet that autocasts on CUDA); ``--precision full`` turns
    that off, the other precisions leave the config's choice."""
    config = OmegaConf.load(Path(__file__).parent / "configs" / "tiny_ldm.yaml")
    config.model.params.first_stage_config.params.ckpt_path = None
    config.model.params.unet_config.params.use_fp16 = True
    OmegaConf.save(config, tmp_path / "tiny.yaml")
    opt = argparse.Namespace(config=str(tmp_path / "tiny.yaml"), ckpt=None, use_ema=False, parameterization=None,
                             precision=precision)
    unet = load_sampling_model(opt, torch.device("cpu")).model.diffusion_model
    assert unet.dtype == expected
    assert all(p.dtype == torch.float32 for p in unet.parameters())
