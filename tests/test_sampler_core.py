"""What the samplers share: conditioning concatenation, the guided model call, the conversion, keyword checks and
the samplers' error messages."""

from __future__ import annotations

import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.models.diffusion.dpm_solver.solver import time_steps
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.sampler_core import concat_conditionings, denoise, guided_model_output
from ldm.models.diffusion.sampling_common import DDIMScheduleSampler
from ldm.models.diffusion.schedule import DiscreteSchedule
from ldm.modules.diffusionmodules.util import make_ddim_timesteps
from tests.sampler_fakes import GaussianModel

QUIET = {"verbose": False, "disable_progress": True}
SAMPLER_CLASSES = [DDIMSampler, PLMSSampler, DPMSolverSampler]


def test_concat_conditionings_tensor_list_dict():
    uc, c = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    assert torch.equal(concat_conditionings(uc, c), torch.cat([uc, c]))
    out = concat_conditionings(
        {"c_concat": [uc[:, :1]], "c_crossattn": [uc, uc]}, {"c_concat": [c[:, :1]], "c_crossattn": [c, 2 * c]}
    )
    assert set(out) == {"c_concat", "c_crossattn"}
    assert torch.equal(out["c_concat"][0], torch.cat([uc[:, :1], c[:, :1]]))
    assert torch.equal(out["c_crossattn"][1], torch.cat([uc, 2 * c]))


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_guided_output_is_one_doubled_call_with_the_cfg_combination(parameterization):
    model = GaussianModel(mu=0.3, sigma=0.7, parameterization=parameterization)
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([10, 500, 900])
    c, uc = torch.randn(3, 1, 8), torch.zeros(3, 1, 8)
    out_c, out_u = model.apply_model(x, t, c), model.apply_model(x, t, uc)
    model.calls.clear()
    guided = guided_model_output(model, x, t, c, uc, 7.5)
    as_dict = guided_model_output(model, x, t, {"c_crossattn": [c]}, {"c_crossattn": [uc]}, 7.5)
    assert model.calls == [6, 6]
    torch.testing.assert_close(guided, out_u + 7.5 * (out_c - out_u), rtol=1e-5, atol=1e-5)
    assert torch.equal(guided, as_dict)


def test_guided_output_without_uc_or_with_scale_one_runs_the_plain_batch():
    model = GaussianModel()
    x, t, c = torch.randn(2, 1, 4, 4), torch.tensor([3, 700]), torch.randn(2, 1, 8)
    plain = model.apply_model(x, t, c)
    model.calls.clear()
    assert torch.equal(guided_model_output(model, x, t, c, torch.zeros_like(c), 1.0), plain)
    assert torch.equal(guided_model_output(model, x, t, c, None, 5.0), plain)
    assert model.calls == [2, 2]


def test_guidance_rescale_matches_the_conditional_spread_and_interpolates():
    """φ = 1 gives each sample the conditional output's standard deviation with the guided direction kept;
    φ = ½ is the mean of the rescaled and the plain guided output (Lin et al. 2024, §3.4)."""
    model = GaussianModel(mu=0.3, sigma=0.7)
    x, t = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([10, 500, 900])
    c, uc = torch.randn(3, 1, 8), torch.zeros(3, 1, 8)
    out_c = model.apply_model(x, t, c)
    plain = guided_model_output(model, x, t, c, uc, 7.5)
    full = guided_model_output(model, x, t, c, uc, 7.5, guidance_rescale=1.0)
    half = guided_model_output(model, x, t, c, uc, 7.5, guidance_rescale=0.5)
    torch.testing.assert_close(full.flatten(1).std(1), out_c.flatten(1).std(1), rtol=1e-5, atol=1e-6)
    cosine = torch.nn.functional.cosine_similarity(full.flatten(1), plain.flatten(1))
    torch.testing.assert_close(cosine, torch.ones(3), rtol=0, atol=1e-6)
    torch.testing.assert_close(half, (full + plain) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="guidance_rescale must lie in"):
        guided_model_output(model, x, t, c, uc, 7.5, guidance_rescale=1.5)


class SpreadByConditioning(GaussianModel):
    """The Gaussian model's output scaled by 1 + mean(cond) per sample, so guidance changes its spread."""

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        out = super().apply_model(x, t, cond)
        return out * (1 + cond.flatten(1).mean(1)).view(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize("cls", SAMPLER_CLASSES)
def test_guidance_rescale_reaches_every_sampler(cls):
    """φ > 0 changes a guided run; φ = 0 is the plain run, bit for bit."""
    model = SpreadByConditioning(mu=0.3, sigma=0.7)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    c, uc = torch.randn(2, 1, 8), torch.zeros(2, 1, 8)

    def run(**kwargs):
        return cls(model).sample(4, 2, (1, 4, 4), conditioning=c, unconditional_conditioning=uc,
                                 unconditional_guidance_scale=5.0, x_T=x_T, **QUIET, **kwargs)[0]

    assert torch.equal(run(), run(guidance_rescale=0.0))
    assert not torch.allclose(run(), run(guidance_rescale=0.7))


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_denoise_reads_the_models_parameterization(parameterization):
    """The exact predictor in any encoding gives the same (x̂_0, ε̂), consistent with x_t = a x̂_0 + s ε̂."""
    x, t = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.tensor([40, 800])
    model = GaussianModel(mu=0.2, sigma=0.6, parameterization=parameterization).double()
    ab = model.alphas_cumprod[t].view(2, 1, 1, 1)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    reference = denoise(GaussianModel(mu=0.2, sigma=0.6).double(), x, t, None, a, s)
    prediction = denoise(model, x, t, None, a, s)
    torch.testing.assert_close(prediction.x0, reference.x0)
    torch.testing.assert_close(prediction.eps, reference.eps)
    torch.testing.assert_close(a * prediction.x0 + s * prediction.eps, x)


# --------------------------------------------------------------------------------------------------------
# Unknown keywords
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_call", "message"),
    [
        (
            lambda: DDIMSampler(GaussianModel()).sample(2, 1, (1, 2, 2), unconditional_guidance_scal=7.5),
            "DDIMSampler.sample() got an unexpected keyword argument 'unconditional_guidance_scal'; "
            "did you mean 'unconditional_guidance_scale'?",
        ),
        (
            lambda: PLMSSampler(GaussianModel()).sample(2, 1, (1, 2, 2), unconditional_conditionin=None),
            "PLMSSampler.sample() got an unexpected keyword argument 'unconditional_conditionin'; "
            "did you mean 'unconditional_conditioning'?",
        ),
        (
            lambda: DPMSolverSampler(GaussianModel()).sample(2, 1, (1, 2, 2), skiptype="logSNR"),
            "DPMSolverSampler.sample() got an unexpected keyword argument 'skiptype'; did you mean 'skip_type'?",
        ),
        (
            lambda: DDIMSampler(GaussianModel()).sample(2, 1, (1, 2, 2), quantize_denoised=True),
            "DDIMSampler.sample() got an unexpected keyword argument 'quantize_denoised'; did you mean 'quantize_x0'?",
        ),
        (
            lambda: DDIMSampler(GaussianModel(), schedul="linear"),
            "DDIMSampler.__init__() got an unexpected keyword argument 'schedul'; did you mean 'schedule'?",
        ),
        (
            lambda: DPMSolverSampler(GaussianModel(), xyz=1),
            "DPMSolverSampler.__init__() got an unexpected keyword argument 'xyz'",
        ),
    ],
)
def test_unknown_keywords_raise_type_error_with_a_suggestion(make_call, message):
    with pytest.raises(TypeError) as error:
        make_call()
    assert str(error.value) == message


#: Keywords callers pass and the samplers accept (the last two: the SD 2.x sampling scripts' extras).
ACCEPTED = {
    "normals_sequence": None, "quantize_x0": False, "mask": None, "x0": None, "temperature": 1.0,
    "noise_dropout": 0.0, "score_corrector": None, "corrector_kwargs": None, "log_every_t": 5,
    "eta": 0.0, "callback": None, "img_callback": None, "unconditional_conditioning": None,
    "unconditional_guidance_scale": 1.0, "generator": None, "dynamic_threshold": None, "ucg_schedule": None,
}  # fmt: skip


#: Per sampler: constructor keywords, and the sample() keywords beyond ACCEPTED it adds or drops.
OWN_KEYWORDS = {
    DDIMSampler: ({"schedule": "linear", "device": "cpu"}, {}, ()),
    PLMSSampler: ({"schedule": "linear", "device": "cpu"}, {}, ("ucg_schedule",)),
    DPMSolverSampler: ({"device": "cpu"}, {"skip_type": "logSNR"}, ("dynamic_threshold", "ucg_schedule")),
}


@pytest.mark.parametrize("cls", SAMPLER_CLASSES)
def test_the_documented_keywords_are_accepted(cls):
    init_kwargs, extra, dropped = OWN_KEYWORDS[cls]
    kwargs = {**{k: v for k, v in ACCEPTED.items() if k not in dropped}, **extra}
    samples, _ = cls(GaussianModel(), **init_kwargs).sample(
        S=2, batch_size=1, shape=(1, 2, 2), conditioning=None, x_T=torch.zeros(1, 1, 2, 2), **kwargs, **QUIET
    )
    assert samples.shape == (1, 1, 2, 2)


# --------------------------------------------------------------------------------------------------------
# Error messages
# --------------------------------------------------------------------------------------------------------


def _short_model() -> GaussianModel:
    model = GaussianModel()
    model.num_timesteps = 999
    return model


def _schedule() -> DiscreteSchedule:
    return DiscreteSchedule(GaussianModel().alphas_cumprod)


MASK = torch.ones(1, 1, 4, 4)
V_MODEL = GaussianModel(parameterization="v")


@pytest.mark.parametrize(
    ("make_call", "error", "fragment"),
    [
        (lambda: DDIMSampler(GaussianModel()).sample(5, 1, (1, 4, 4), mask=MASK, **QUIET), ValueError, "needs x0"),
        (lambda: DDIMSampler(GaussianModel()).sample(5, 1, (1, 4, 4), mask=MASK, **QUIET), AssertionError,
         "needs x0"),
        (lambda: PLMSSampler(GaussianModel()).sample(10, 1, (1, 4, 4), eta=0.5, **QUIET), ValueError,
         "ddim_eta must be 0 for PLMS"),
        (lambda: DPMSolverSampler(GaussianModel()).sample(5, 1, (1, 4, 4), eta=1.0, mask=MASK, x0=MASK, **QUIET),
         ValueError, "does not support eta, mask/x0"),
        (lambda: DDIMSampler(GaussianModel()).sample(4, 1, (1, 4, 4), ucg_schedule=[2.0] * 3, **QUIET), ValueError,
         "3 guidance scales for 4 steps"),
        (lambda: DDIMSampler(GaussianModel()).sample(4, 1, (1, 4, 4), dynamic_threshold=0.9, **QUIET),
         NotImplementedError, "dynamic_threshold"),
        (lambda: DDIMSampler(V_MODEL).sample(2, 1, (1, 4, 4), score_corrector=object(), **QUIET), ValueError,
         "score_corrector needs an ε-predicting model, but this one predicts 'v'"),
        (lambda: DDIMScheduleSampler(_short_model()).make_schedule(10, verbose=False), ValueError, "every timestep"),
        (lambda: DPMSolverSampler(_short_model()), ValueError, "every timestep"),
        (lambda: make_ddim_timesteps("uniform", 1000, 1000, verbose=False), ValueError, "past the model's last step"),
        (lambda: make_ddim_timesteps("cubic", 10, 1000, verbose=False), NotImplementedError, "ddim_discretize"),
        (lambda: time_steps(_schedule(), 10, "quadratic"), ValueError, "skip_type 'quadratic' is unknown"),
        (lambda: time_steps(_schedule(), 0), ValueError, "at least one step"),
        (lambda: concat_conditionings({"c_crossattn": [MASK]}, {"c_concat": [MASK]}), TypeError, "same keys"),
        (lambda: concat_conditionings([MASK], [MASK, MASK]), TypeError, "list of 2"),
    ],
)  # fmt: skip
def test_errors_name_the_problem(make_call, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        make_call()
