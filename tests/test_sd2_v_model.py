"""The whole tiny SD 2.x v-model of ``refdata/sd2`` (``ldm_v_tiny.yaml``: LatentDiffusion with parameterization
"v", the linear-projection UNet, OpenCLIP text stage, KL first stage) against the original code's numbers.

Evidence: ``tests/refdata/sd2/vectors/v.pt`` (README there). Tolerances as stated there: the conversions rtol 1e-5 /
atol 1e-6, model outputs 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from tests.sd2_refmodels import build_config, load_recipe, load_vectors

CASE = load_vectors("v.pt")
CONVERSIONS = {"rtol": 1e-5, "atol": 1e-6}
MODEL_OUTPUTS = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def v_model():
    return load_recipe(build_config(CASE["config"]), CASE).eval()


def test_state_dict_is_the_originals_parameters_plus_the_schedule(v_model):
    buffers = set(v_model.state_dict()) - {key for key, _ in v_model.named_parameters()}
    assert buffers == set(CASE["buffer_shapes"])
    for name, table in CASE["schedule"].items():
        torch.testing.assert_close(getattr(v_model, name), table, **CONVERSIONS)
    torch.testing.assert_close(v_model.lvlb_weights, CASE["lvlb_weights"], **CONVERSIONS)


def test_v_conversions(v_model):
    inputs, outputs = CASE["inputs"], CASE["outputs"]
    x_start, noise, t, v = inputs["x_start"], inputs["noise"], inputs["t"], inputs["v"]
    x_t = v_model.q_sample(x_start, t, noise)
    torch.testing.assert_close(x_t, outputs["q_sample"], **CONVERSIONS)
    torch.testing.assert_close(v_model.get_v(x_start, noise, t), outputs["get_v"], **CONVERSIONS)
    torch.testing.assert_close(v_model.predict_start_from_z_and_v(x_t, t, v), outputs["predict_start_from_z_and_v"],
                               **CONVERSIONS)
    torch.testing.assert_close(v_model.predict_eps_from_z_and_v(x_t, t, v), outputs["predict_eps_from_z_and_v"],
                               **CONVERSIONS)
    true_v = v_model.get_v(x_start, noise, t)
    assert (v_model.predict_start_from_z_and_v(x_t, t, true_v) - x_start).abs().max() < 1e-5
    assert (v_model.predict_eps_from_z_and_v(x_t, t, true_v) - noise).abs().max() < 1e-5


@torch.no_grad()
def test_apply_model_with_the_linear_projection_unet(v_model):
    inputs, outputs = CASE["inputs"], CASE["outputs"]
    got = v_model.apply_model(outputs["q_sample"], inputs["t"], inputs["c"])
    torch.testing.assert_close(got, outputs["apply_model"], **MODEL_OUTPUTS)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_p_losses_regress_onto_v(v_model, mode):
    inputs, outputs = CASE["inputs"], CASE["outputs"]
    v_model.train(mode == "train")
    try:
        with torch.no_grad():
            loss, logs = v_model.p_losses(inputs["x_start"], inputs["c"], inputs["t"], noise=inputs["noise"])
    finally:
        v_model.eval()
    torch.testing.assert_close(loss, outputs[f"p_losses_{mode}_loss"], **MODEL_OUTPUTS)
    expected = outputs[f"p_losses_{mode}_loss_dict"]
    assert set(logs) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(logs[key], value, **MODEL_OUTPUTS)


@torch.no_grad()
def test_ancestral_sampling_of_a_v_model_runs_where_the_original_raised(v_model):
    """The original's p_mean_variance raises NotImplementedError for v; here the posterior comes from the one
    conversion point: its mean at t = 0 is x̂_0 = a·x_t − s·v̂ exactly (posterior_mean_coef2[0] = 0)."""
    assert "NotImplementedError" in str(CASE["quirks"]["p_mean_variance_v"])
    x_t, c = CASE["outputs"]["q_sample"], CASE["inputs"]["c"]
    t = torch.zeros(2, dtype=torch.long)
    mean, variance, _ = v_model.p_mean_variance(x_t, c, t, clip_denoised=False)
    v_hat = v_model.apply_model(x_t, t, c)
    torch.testing.assert_close(mean, v_model.predict_start_from_z_and_v(x_t, t, v_hat), **MODEL_OUTPUTS)
    assert torch.isfinite(v_model.p_sample(x_t, c, t, clip_denoised=False)).all()
