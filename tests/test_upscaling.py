"""ldm.modules.diffusionmodules.upscaling: the low-res conditioning of the x4 upscaler.

The forward process is checked in closed form (moments of many draws), the draw order against a replay with the
same seed (noise level first, then the noise, as the original), and the schedule against ᾱ_t = ∏ (1 − β_s).
"""

from __future__ import annotations

import pytest
import torch

from ldm.modules.diffusionmodules.upscaling import (
    LOW_SCALE_BUFFERS,
    AbstractLowScaleModel,
    ImageConcatWithNoiseAugmentation,
    SimpleImageConcat,
)

SCHEDULE = {"linear_start": 0.0001, "linear_end": 0.02}


def test_the_schedule_is_eight_persistent_tables_of_the_forward_process():
    model = ImageConcatWithNoiseAugmentation(SCHEDULE, max_noise_level=350)
    assert list(model.state_dict()) == list(LOW_SCALE_BUFFERS) and model.num_timesteps == 1000
    betas = torch.linspace(0.0001**0.5, 0.02**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(model.alphas_cumprod, alpha_bar.float())
    torch.testing.assert_close(model.sqrt_recipm1_alphas_cumprod, (1 / alpha_bar - 1).sqrt().float())
    assert model.alphas_cumprod_prev[0] == 1 and torch.equal(model.alphas_cumprod_prev[1:], model.alphas_cumprod[:-1])


@pytest.mark.parametrize("level", [0, 20, 349])
def test_q_sample_has_the_moments_of_the_forward_process(level):
    model = ImageConcatWithNoiseAugmentation(SCHEDULE, max_noise_level=350)
    n = 200_000
    x = torch.full((n, 1), 0.7)
    torch.manual_seed(level)
    out = model.q_sample(x, torch.full((n,), level))
    alpha_bar = model.alphas_cumprod[level].double()
    spread = (1 - alpha_bar).sqrt()
    assert abs(out.double().mean() - alpha_bar.sqrt() * 0.7) < 5 * spread / n**0.5
    assert abs(out.double().std() / spread - 1) < 0.01


def test_forward_draws_the_level_then_the_noise():
    model = ImageConcatWithNoiseAugmentation(SCHEDULE, max_noise_level=350)
    x = torch.rand(4, 3, 5, 5) * 2 - 1
    torch.manual_seed(7)
    noised, levels = model(x)
    torch.manual_seed(7)
    replay_levels = torch.randint(0, 350, (4,))
    noise = torch.randn_like(x)
    signal = model.sqrt_alphas_cumprod[replay_levels].view(-1, 1, 1, 1)
    spread = model.sqrt_one_minus_alphas_cumprod[replay_levels].view(-1, 1, 1, 1)
    assert torch.equal(levels, replay_levels) and levels.dtype == torch.long
    torch.testing.assert_close(noised, signal * x + spread * noise, rtol=0, atol=0)


def test_a_given_noise_level_is_used_for_every_sample():
    model = ImageConcatWithNoiseAugmentation(SCHEDULE, max_noise_level=350)
    x = torch.randn(3, 1, 2, 2)
    assert model(x, noise_level=20)[1].tolist() == [20, 20, 20]
    assert model(x, noise_level=torch.tensor([0, 5, 9]))[1].tolist() == [0, 5, 9]
    torch.manual_seed(0)
    drawn = model(torch.zeros(5000, 1), None)[1]
    assert drawn.min() >= 0 and drawn.max() <= 349 and drawn.max() > 300
    with pytest.raises(TypeError, match="noise_level"):
        model(x, noise_level=0.5)


def test_the_simple_and_abstract_models_pass_the_image_through():
    x = torch.randn(2, 3, 4, 4)
    image, level = SimpleImageConcat()(x)
    assert image is x and level.tolist() == [0, 0] and SimpleImageConcat().max_noise_level == 0
    plain = AbstractLowScaleModel()
    assert plain(x) == (x, None) and plain.decode(x) is x and not list(plain.state_dict())
    with pytest.raises(RuntimeError, match="noise_schedule_config"):
        plain.q_sample(x, torch.tensor([0, 1]))


def test_a_meta_device_build_keeps_real_schedule_values():
    with torch.device("meta"):
        model = ImageConcatWithNoiseAugmentation(SCHEDULE)
    assert model.betas.device.type == "cpu" and model.betas[0].item() == pytest.approx(1e-4)
