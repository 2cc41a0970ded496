"""The demo's measurements (ldm/evaluation/demo_metrics.py): closed forms and a checker that can fail."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ldm.data.shapes import COLORS, KINDS, ShapeSpec, render
from ldm.evaluation.demo_metrics import (
    CHANCE,
    heldout_images,
    prompt_adherence,
    prompt_specs,
    psnr,
    reconstruction_stats,
)
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution


def test_psnr_closed_form() -> None:
    x = torch.zeros(2, 3, 4, 4)
    delta = torch.tensor([0.2, 0.02]).view(2, 1, 1, 1)
    # error δ on [-1, 1] is δ/2 on [0, 1]: PSNR = -20 log10(δ/2)
    expected = torch.tensor([-20 * math.log10(0.1), -20 * math.log10(0.01)])
    torch.testing.assert_close(psnr(x, x + delta), expected)


def test_psnr_clamps_the_reconstruction_and_checks_shapes() -> None:
    x = torch.ones(1, 3, 4, 4)
    assert psnr(x, 5 * x).item() > 90  # clamped to 1: perfect up to the 1e-10 floor
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(x, torch.ones(1, 3, 4, 5))


class _IdentityAutoencoder(torch.nn.Module):
    """encode: a near-deterministic posterior with mean x; decode: z + offset."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(offset))

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(torch.cat([x, torch.full_like(x, -30.0)], dim=1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.offset


def test_reconstruction_stats_of_a_known_autoencoder() -> None:
    images = heldout_images(10, size=16)
    assert images.shape == (10, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    stats = reconstruction_stats(_IdentityAutoencoder(0.02), images, batch_size=4)
    # decode(mode) = x + 0.02, before clamping to [-1, 1]: PSNR ≥ -20 log10(0.01) = 40 dB
    assert 40.0 <= stats["psnr_db"] < 60.0
    assert stats["latent_std"] == pytest.approx(float(images.std()), rel=1e-3)
    assert stats["latent_mean"] == pytest.approx(float(images.mean()), abs=1e-3)
    expected_kl = 0.5 * float((images**2 + math.exp(-30.0) - 1.0 + 30.0).flatten(1).sum(1).mean())
    assert stats["kl"] == pytest.approx(expected_kl, rel=1e-4)


def test_prompt_specs_cover_every_kind_and_colour() -> None:
    specs = prompt_specs(per_combination=2)
    assert len(specs) == 2 * len(KINDS) * len(COLORS)
    assert {(s.kind, s.color) for s in specs} == set(itertools.product(KINDS, COLORS))
    assert len({s.caption for s in specs}) > len(KINDS) * len(COLORS)  # sizes and positions vary too


def test_prompt_adherence_is_perfect_on_ground_truth_and_fails_on_wrong_images() -> None:
    specs = prompt_specs(per_combination=1)
    truth = [render(spec, 32) for spec in specs]
    result = prompt_adherence(truth, specs)
    assert result["accuracy"]["color"] == 1.0 and result["accuracy"]["kind"] == 1.0
    assert result["chance"] == CHANCE and CHANCE["color"] == pytest.approx(0.2)
    wrong = [ShapeSpec(KINDS[(KINDS.index(s.kind) + 1) % 3], s.color, s.size, s.position) for s in specs]
    assert prompt_adherence(truth, wrong)["accuracy"]["kind"] == 0.0
    blank = [np.full((32, 32, 3), 255, dtype=np.uint8)] * len(specs)
    assert prompt_adherence(blank, specs)["accuracy"]["color"] == 0.0
