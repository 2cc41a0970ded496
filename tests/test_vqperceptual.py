"""ldm.modules.losses.vqperceptual: VQLPIPSWithDiscriminator's math, logs, perplexity and parameters."""

import math

import pytest
import torch
from torch import nn

from ldm.modules.losses import VQLPIPSWithDiscriminator
from ldm.modules.losses.vqperceptual import measure_perplexity
from tests.helpers import load_manifest, state_dict_manifest

GEN_KEYS = {"total_loss", "quant_loss", "nll_loss", "rec_loss", "p_loss", "d_weight", "disc_factor", "g_loss"}


def _loss(**kwargs) -> VQLPIPSWithDiscriminator:
    torch.manual_seed(0)
    return VQLPIPSWithDiscriminator(**({"disc_start": 5, "perceptual_weight": 0.0} | kwargs))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    z = torch.randn(2, 4, 32, 32, generator=g)
    return x, z


@pytest.mark.parametrize("pixel_loss", ["l1", "l2"])
def test_generator_loss_against_a_hand_computation(pixel_loss):
    loss_fn = _loss(pixel_loss=pixel_loss, codebook_weight=0.25, disc_weight=0.8, disc_factor=0.5)
    conv_out = nn.Conv2d(4, 3, 3, padding=1)
    x, z = _batch(1)
    x_rec = conv_out(z)
    codebook = torch.tensor(0.3, requires_grad=True)
    loss, log = loss_fn(codebook, x, x_rec, 0, global_step=7, last_layer=conv_out.weight)
    assert set(log) == {f"train/{k}" for k in GEN_KEYS}

    diff = x - x_rec
    nll = (diff.abs() if pixel_loss == "l1" else diff**2).mean()
    g = -loss_fn.discriminator(x_rec).mean()
    grad_nll = torch.autograd.grad(nll, conv_out.weight, retain_graph=True)[0]
    grad_g = torch.autograd.grad(g, conv_out.weight, retain_graph=True)[0]
    d_weight = 0.8 * grad_nll.norm() / (grad_g.norm() + 1e-4)
    torch.testing.assert_close(log["train/nll_loss"], nll.detach())
    torch.testing.assert_close(log["train/d_weight"], d_weight.detach())
    torch.testing.assert_close(loss, nll + d_weight.detach() * 0.5 * g + 0.25 * codebook)
    assert log["train/p_loss"].item() == 0.0 and log["train/quant_loss"].item() == pytest.approx(0.3)
    loss.backward()
    assert codebook.grad.item() == pytest.approx(0.25)


def test_disc_factor_before_disc_start_and_missing_codebook_loss():
    loss_fn = _loss(disc_start=5)
    x, z = _batch(2)
    with torch.no_grad():
        loss, log = loss_fn(None, x, torch.tanh(z[:, :3]), 0, global_step=4, split="val")
    assert log["val/disc_factor"].item() == 0.0 and log["val/d_weight"].item() == 0.0
    torch.testing.assert_close(loss, (x - torch.tanh(z[:, :3])).abs().mean())


def test_zero_disc_factor_never_runs_the_discriminator(monkeypatch):
    loss_fn = _loss(disc_factor=0.0, codebook_weight=0.5)
    monkeypatch.setattr(loss_fn.discriminator, "forward", lambda *a: pytest.fail("the discriminator must not run"))
    x, z = _batch(3)
    x_rec = torch.tanh(z[:, :3])
    loss, log = loss_fn(torch.tensor(0.2), x, x_rec, 0, global_step=100)
    torch.testing.assert_close(loss, (x - x_rec).abs().mean() + 0.5 * 0.2)
    assert set(log) == {f"train/{k}" for k in GEN_KEYS - {"g_loss"}}
    d_loss, d_log = loss_fn(None, x, x_rec, 1, global_step=100)
    assert d_loss.item() == 0.0 and set(d_log) == {"train/disc_loss"}


def test_perplexity_and_cluster_usage_are_logged():
    loss_fn = _loss(n_classes=8)
    x, z = _batch(3)
    indices = torch.arange(8).repeat(4).view(2, 4, 4)  # every code equally often
    with torch.no_grad():
        _, log = loss_fn(torch.tensor(0.0), x, torch.tanh(z[:, :3]), 0, global_step=0, predicted_indices=indices)
    assert log["train/perplexity"].item() == pytest.approx(8.0, rel=1e-5)
    assert log["train/cluster_usage"].item() == 8
    perplexity, used = measure_perplexity(torch.tensor([0, 0, 0, 1]), 8)
    p = torch.tensor([0.75, 0.25])
    assert perplexity.item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5) and used.item() == 2

    with torch.no_grad():  # without n_classes (as in the original VQ configs) there is nothing to measure against
        _, log = _loss()(torch.tensor(0.0), x, x, 0, global_step=0, predicted_indices=indices)
    assert "train/perplexity" not in log and "train/cluster_usage" not in log


def test_discriminator_step_vanilla():
    loss_fn = _loss(disc_loss="vanilla", disc_factor=2.0)
    x, z = _batch(4)
    x_rec = torch.tanh(z[:, :3])
    d_loss, log = loss_fn(None, x, x_rec, 1, global_step=5)
    real, fake = loss_fn.discriminator(x), loss_fn.discriminator(x_rec)
    expected = 2.0 * 0.5 * (nn.functional.softplus(-real).mean() + nn.functional.softplus(fake).mean())
    torch.testing.assert_close(d_loss, expected)
    assert set(log) == {"train/disc_loss", "train/logits_real", "train/logits_fake"}


def test_perceptual_term_and_keys():
    loss_fn = _loss(perceptual_weight=1.0, perceptual_backbone="random", disc_ndf=32, disc_num_layers=2)
    x, z = _batch(5)
    x_rec = torch.tanh(z[:, :3])
    with torch.no_grad():
        _, log = loss_fn(None, x, x_rec, 0, global_step=0)
        p = loss_fn.perceptual_loss(x, x_rec)
    torch.testing.assert_close(log["train/p_loss"], p.mean())
    torch.testing.assert_close(log["train/rec_loss"], ((x - x_rec).abs() + p).mean())
    keys = state_dict_manifest(loss_fn)
    lpips_keys = {k: v for k, v in load_manifest("ldm-kl-f8.tsv").items() if k.startswith("loss.perceptual_loss.")}
    assert {k: v for k, v in keys.items() if k.startswith("perceptual_loss.")} == {
        k.removeprefix("loss."): v for k, v in lpips_keys.items()}
    assert keys["discriminator.main.0.weight"] == ((32, 3, 4, 4), "float32")
    assert keys["discriminator.main.8.weight"] == ((1, 128, 4, 4), "float32")


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="perceptual_loss"):
        _loss(perceptual_loss="dists")
    with pytest.raises(ValueError, match="pixel_loss"):
        _loss(pixel_loss="huber")
    with pytest.raises(ValueError, match="disc_loss"):
        _loss(disc_loss="wgan")


def test_hinge_d_loss_with_exemplar_weights() -> None:
    from ldm.modules.losses.vqperceptual import hinge_d_loss, hinge_d_loss_with_exemplar_weights

    torch.manual_seed(0)
    real, fake = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(hinge_d_loss_with_exemplar_weights(real, fake, torch.ones(3)), hinge_d_loss(real, fake))
    weights = torch.tensor([1.0, 0.0, 3.0])
    per_real = torch.relu(1 - real).mean(dim=[1, 2, 3])
    per_fake = torch.relu(1 + fake).mean(dim=[1, 2, 3])
    expected = 0.5 * ((per_real[0] + 3 * per_real[2]) / 4 + (per_fake[0] + 3 * per_fake[2]) / 4)
    torch.testing.assert_close(hinge_d_loss_with_exemplar_weights(real, fake, weights), expected)
    with pytest.raises(ValueError, match="batch size"):
        hinge_d_loss_with_exemplar_weights(real, fake, torch.ones(2))
