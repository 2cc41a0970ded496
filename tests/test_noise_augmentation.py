"""ldm.modules.encoders.noise_augmentation: unCLIP's noise augmentation of CLIP image embeddings.

z = σ_d (√ᾱ_s (x − μ_d)/σ_d + √(1 − ᾱ_s) ε) + μ_d, so z ~ N(μ_d + √ᾱ_s (x − μ_d), σ_d² (1 − ᾱ_s)); checked by
sampling, by a replay of the draws, and the Karlo schedule against its closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

from ldm.modules.diffusionmodules.util import make_beta_schedule, timestep_embedding
from ldm.modules.encoders.modules import CLIPEmbeddingNoiseAugmentation
from ldm.modules.encoders.noise_augmentation import load_clip_stats

KARLO = {"timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}


@pytest.fixture
def stats_file(tmp_path):
    mean, std = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.1, 2.0, 0.5])
    path = tmp_path / "stats.th"
    torch.save((mean, std), path)
    return path, mean, std


def test_the_karlo_schedule_is_the_cosine_alpha_bar():
    betas = make_beta_schedule("squaredcos_cap_v2", 1000)
    alpha_bar = torch.cumprod(1 - torch.from_numpy(betas), 0)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    closed = torch.tensor([f((t + 1) / 1000) / f(0) for t in range(1000)], dtype=torch.float64)
    assert betas.max() == pytest.approx(0.999)  # the last step is capped
    torch.testing.assert_close(alpha_bar[:-1], closed[:-1], rtol=1e-10, atol=1e-14)


def test_scale_standardises_and_unscale_inverts_it(stats_file):
    path, mean, std = stats_file
    augmentor = CLIPEmbeddingNoiseAugmentation(clip_stats_path=str(path), noise_schedule_config=KARLO, timestep_dim=8)
    data = mean + std * torch.randn(50_000, 3, generator=torch.Generator().manual_seed(0))
    scaled = augmentor.scale(data)
    torch.testing.assert_close(scaled.mean(0), torch.zeros(3), atol=0.02, rtol=0)
    torch.testing.assert_close(scaled.std(0), torch.ones(3), atol=0.02, rtol=0)
    torch.testing.assert_close(augmentor.unscale(scaled), data, atol=1e-5, rtol=1e-5)
    assert set(augmentor.state_dict()) == {
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    }  # data_mean / data_std are not saved


@pytest.mark.parametrize("level", [10, 500])
def test_the_noised_embedding_has_the_closed_form_moments(stats_file, level):
    path, mean, std = stats_file
    augmentor = CLIPEmbeddingNoiseAugmentation(clip_stats_path=str(path), noise_schedule_config=KARLO)
    x = torch.tensor([1.0, 0.0, 3.0]).expand(100_000, 3)
    torch.manual_seed(level)
    z, emb = augmentor(x, noise_level=level)
    alpha_bar = augmentor.alphas_cumprod[level]
    torch.testing.assert_close(z.mean(0), mean + alpha_bar.sqrt() * (x[0] - mean), atol=0.02 * 2, rtol=0)
    torch.testing.assert_close(z.std(0), std * (1 - alpha_bar).sqrt(), rtol=0.02, atol=1e-4)
    torch.testing.assert_close(emb[:1], timestep_embedding(torch.tensor([level]), 256))


def test_forward_draws_the_level_then_the_noise_and_embeds_the_level():
    augmentor = CLIPEmbeddingNoiseAugmentation(noise_schedule_config=KARLO, timestep_dim=6, max_noise_level=700)
    x = torch.randn(4, 6)
    torch.manual_seed(2)
    z, emb = augmentor(x)
    torch.manual_seed(2)
    levels = torch.randint(0, 700, (4,))
    noise = torch.randn_like(x)
    a = augmentor.sqrt_alphas_cumprod[levels][:, None]
    s = augmentor.sqrt_one_minus_alphas_cumprod[levels][:, None]
    torch.testing.assert_close(z, a * x + s * noise, rtol=0, atol=0)  # μ_d = 0, σ_d = 1
    torch.testing.assert_close(emb, timestep_embedding(levels, 6), rtol=0, atol=0)


def test_a_missing_or_malformed_statistics_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"noise_aug_config\.params\.clip_stats_path.*no such file"):
        CLIPEmbeddingNoiseAugmentation(clip_stats_path=str(tmp_path / "nope.th"), noise_schedule_config=KARLO)
    torch.save({"mean": torch.zeros(3)}, tmp_path / "bad.th")
    with pytest.raises(ValueError, match=r"\(mean, std\) pair"):
        load_clip_stats(tmp_path / "bad.th")


def test_a_meta_device_build_keeps_real_statistics(stats_file):
    path, mean, _ = stats_file
    with torch.device("meta"):
        plain = CLIPEmbeddingNoiseAugmentation(noise_schedule_config=KARLO, timestep_dim=4)
        loaded = CLIPEmbeddingNoiseAugmentation(clip_stats_path=str(path), noise_schedule_config=KARLO)
    assert plain.data_mean.device.type == "cpu" and torch.equal(plain.data_std, torch.ones(1, 4))
    assert torch.equal(loaded.data_mean, mean[None])
