"""ldm.modules.losses.contperceptual: LPIPSWithDiscriminator's keys, NLL/KL/GAN math, adaptive weight and logs."""

import logging

import pytest
import torch
from torch import nn

from ldm.modules.losses import LPIPSWithDiscriminator
from ldm.modules.losses.discriminator import hinge_d_loss, vanilla_d_loss
from tests.helpers import load_manifest, state_dict_manifest

GEN_KEYS = {"total_loss", "logvar", "kl_loss", "nll_loss", "rec_loss", "d_weight", "disc_factor", "g_loss"}
DISC_KEYS = {"disc_loss", "logits_real", "logits_fake"}


class FixedPosterior:
    """Stands in for DiagonalGaussianDistribution: the loss only calls ``kl()`` -> ``(B,)``."""

    def __init__(self, kl: torch.Tensor) -> None:
        self._kl = kl

    def kl(self) -> torch.Tensor:
        return self._kl


class TinyDecoder(nn.Module):
    """A decoder reduced to its last layer: ``(B, 4, H, W) -> (B, 3, H, W)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_out = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv_out(z))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    z = torch.randn(2, 4, 32, 32, generator=g)
    kl = torch.rand(2, generator=g) * 100
    return x, z, FixedPosterior(kl)


def _loss(**kwargs) -> LPIPSWithDiscriminator:
    torch.manual_seed(0)
    params = {"disc_start": 10, "perceptual_weight": 0.0, "kl_weight": 1e-3} | kwargs
    return LPIPSWithDiscriminator(**params)


def test_keys_shapes_dtypes_match_the_kl_f8_manifest():
    with torch.device("meta"):
        loss = LPIPSWithDiscriminator(disc_start=50001, kl_weight=1e-6, disc_weight=0.5)
    expected = {k.removeprefix("loss."): v for k, v in load_manifest("ldm-kl-f8.tsv").items() if k.startswith("loss.")}
    assert state_dict_manifest(loss) == expected
    assert isinstance(loss.logvar, nn.Parameter) and loss.logvar.shape == ()


def test_nll_and_kl_against_a_hand_computation_with_logvar():
    loss_fn = _loss(logvar_init=0.7, disc_factor=0.0)
    x, z, post = _batch()
    x_rec = torch.tanh(z[:, :3])
    loss, log = loss_fn(x, x_rec, post, 0, global_step=0, last_layer=None)
    rec = (x - x_rec).abs()
    nll = (rec / torch.exp(torch.tensor(0.7)) + 0.7).sum() / 2
    kl = post.kl().sum() / 2
    torch.testing.assert_close(log["train/nll_loss"], nll)
    torch.testing.assert_close(log["train/kl_loss"], kl)
    torch.testing.assert_close(log["train/rec_loss"], rec.mean())
    torch.testing.assert_close(loss, nll + 1e-3 * kl)
    assert log["train/logvar"].item() == pytest.approx(0.7) and log["train/d_weight"].item() == 0.0

    weights = torch.rand(2, 1, 1, 1)
    weighted, _ = loss_fn(x, x_rec, post, 0, global_step=0, weights=weights)
    expected = (weights * (rec / torch.exp(torch.tensor(0.7)) + 0.7)).sum() / 2 + 1e-3 * kl
    torch.testing.assert_close(weighted, expected)


def test_perceptual_term_is_added_to_the_pixel_term():
    loss_fn = _loss(perceptual_weight=0.5, perceptual_backbone="random", disc_factor=0.0)
    x, z, post = _batch(1)
    x_rec = torch.tanh(z[:, :3])
    _, log = loss_fn(x, x_rec, post, 0, global_step=0)
    with torch.no_grad():
        p = loss_fn.perceptual_loss(x, x_rec)
    torch.testing.assert_close(log["train/rec_loss"], ((x - x_rec).abs() + 0.5 * p).mean())


def test_adaptive_weight_equals_the_gradient_norm_ratio_at_the_last_layer():
    loss_fn = _loss(disc_weight=0.5, logvar_init=0.3)
    decoder = TinyDecoder()
    x, z, post = _batch(2)
    x_rec = decoder(z)
    last = decoder.conv_out.weight
    loss, log = loss_fn(x, x_rec, post, 0, global_step=100, last_layer=last)

    nll = ((x - x_rec).abs() / torch.exp(loss_fn.logvar) + loss_fn.logvar).sum() / 2
    g = -loss_fn.discriminator(x_rec).mean()
    grad_nll = torch.autograd.grad(nll, last, retain_graph=True)[0]
    grad_g = torch.autograd.grad(g, last, retain_graph=True)[0]
    expected = 0.5 * grad_nll.norm() / (grad_g.norm() + 1e-4)
    torch.testing.assert_close(log["train/d_weight"], expected.detach())
    torch.testing.assert_close(log["train/g_loss"], g.detach())
    torch.testing.assert_close(loss, nll + 1e-3 * post.kl().sum() / 2 + expected * 1.0 * g)
    assert not log["train/d_weight"].requires_grad
    loss.backward()  # the total loss still trains the decoder and the logvar
    assert last.grad is not None and loss_fn.logvar.grad is not None


def test_disc_factor_is_zero_before_disc_start_and_set_after():
    loss_fn = _loss(disc_factor=0.8, disc_start=10)
    decoder = TinyDecoder()
    x, z, post = _batch(3)
    before, log_before = loss_fn(x, decoder(z), post, 0, global_step=9, last_layer=decoder.conv_out.weight)
    after, log_after = loss_fn(x, decoder(z), post, 0, global_step=10, last_layer=decoder.conv_out.weight)
    assert log_before["train/disc_factor"].item() == 0.0 and log_after["train/disc_factor"].item() == pytest.approx(0.8)
    torch.testing.assert_close(before, log_before["train/nll_loss"] + 1e-3 * log_before["train/kl_loss"])
    gan = log_after["train/d_weight"] * 0.8 * log_after["train/g_loss"]
    torch.testing.assert_close(after.detach(), log_after["train/nll_loss"] + 1e-3 * log_after["train/kl_loss"] + gan)

    d_before, _ = loss_fn(x, decoder(z), post, 1, global_step=9)
    assert d_before.item() == 0.0


def test_discriminator_step_hinge_and_vanilla():
    x, z, post = _batch(4)
    x_rec = torch.tanh(z[:, :3])
    for name, d_loss in (("hinge", hinge_d_loss), ("vanilla", vanilla_d_loss)):
        loss_fn = _loss(disc_loss=name, disc_factor=0.6)
        loss, log = loss_fn(x, x_rec, post, 1, global_step=20, split="val")
        assert set(log) == {f"val/{k}" for k in DISC_KEYS}
        real, fake = loss_fn.discriminator(x), loss_fn.discriminator(x_rec)
        torch.testing.assert_close(loss, 0.6 * d_loss(real, fake))
        torch.testing.assert_close(log["val/logits_real"], real.mean().detach())
        torch.testing.assert_close(log["val/logits_fake"], fake.mean().detach())


def test_log_keys_and_eval_fallback_without_gradients():
    loss_fn = _loss().eval()
    x, z, post = _batch(5)
    with torch.no_grad():
        _, log = loss_fn(x, torch.tanh(z[:, :3]), post, 0, global_step=100, split="val")
    assert set(log) == {f"val/{k}" for k in GEN_KEYS}
    assert log["val/d_weight"].item() == 0.0


def test_zero_perceptual_weight_never_runs_lpips(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING):  # default backbone "pretrained": nothing is loaded, no network needed
        loss_fn = _loss(perceptual_weight=0.0, disc_factor=0.0)
    assert not caplog.records
    monkeypatch.setattr(loss_fn.perceptual_loss, "forward", lambda *a: pytest.fail("LPIPS must not run"))
    x, z, post = _batch(6)
    loss_fn(x, torch.tanh(z[:, :3]), post, 0, global_step=0)
    assert "perceptual_loss.net.slice1.0.weight" in loss_fn.state_dict()


def test_zero_disc_factor_never_runs_the_discriminator(monkeypatch):
    loss_fn = _loss(disc_factor=0.0, logvar_init=0.3)
    monkeypatch.setattr(loss_fn.discriminator, "forward", lambda *a: pytest.fail("the discriminator must not run"))
    decoder = TinyDecoder()
    x, z, post = _batch(8)
    x_rec = decoder(z)
    loss, log = loss_fn(x, x_rec, post, 0, global_step=1000, last_layer=decoder.conv_out.weight)
    nll = ((x - x_rec).abs() / torch.exp(torch.tensor(0.3)) + 0.3).sum() / 2
    torch.testing.assert_close(loss, nll + 1e-3 * post.kl().sum() / 2)
    assert set(log) == {f"train/{k}" for k in GEN_KEYS - {"g_loss"}}  # only D computes g_loss
    assert log["train/d_weight"].item() == 0.0 and log["train/disc_factor"].item() == 0.0
    d_loss, d_log = loss_fn(x, x_rec, post, 1, global_step=1000)
    assert d_loss.item() == 0.0 and not d_loss.requires_grad and set(d_log) == {"train/disc_loss"}


def test_conditional_discriminator_takes_the_condition():
    loss_fn = _loss(disc_conditional=True, disc_in_channels=4)
    x, z, post = _batch(7)
    x_rec, cond = torch.tanh(z[:, :3]), z[:, 3:]
    with torch.no_grad():
        _, log = loss_fn(x, x_rec, post, 0, global_step=0, cond=cond)
        expected = -loss_fn.discriminator(torch.cat([x_rec, cond], 1)).mean()
    torch.testing.assert_close(log["train/g_loss"], expected)
    with pytest.raises(ValueError, match="disc_conditional"):
        loss_fn(x, x_rec, post, 0, global_step=0)


def test_bad_configuration_and_calls_raise():
    with pytest.raises(ValueError, match="disc_loss"):
        _loss(disc_loss="wgan")
    with pytest.raises(ValueError, match="perceptual_backbone"):  # no silent untrained backbone
        _loss(perceptual_weight=1.0, perceptual_backbone=None)
    loss_fn = _loss()
    x, z, post = _batch(8)
    decoder = TinyDecoder()
    with pytest.raises(ValueError, match="last_layer"):  # needed once the GAN term is on (disc_start 10)
        loss_fn(x, decoder(z), post, 0, global_step=10)
    with pytest.raises(ValueError, match="optimizer_idx"):
        loss_fn(x, decoder(z), post, 2, global_step=0)
