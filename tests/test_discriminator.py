"""ldm.modules.losses.discriminator: PatchGAN keys and init, ActNorm, the d-losses and adopt_weight."""

import pytest
import torch
from torch import nn

from ldm.modules.losses.discriminator import (
    ActNorm,
    NLayerDiscriminator,
    adopt_weight,
    hinge_d_loss,
    vanilla_d_loss,
    weights_init,
)
from tests.helpers import load_manifest, state_dict_manifest


def test_keys_and_shapes_match_the_original_manifest():
    torch.manual_seed(0)
    disc = NLayerDiscriminator(input_nc=3, n_layers=3, use_actnorm=False).apply(weights_init)
    expected = {k.removeprefix("loss.discriminator."): v for k, v in load_manifest("ldm-kl-f8.tsv").items()
                if k.startswith("loss.discriminator.")}
    assert state_dict_manifest(disc) == expected
    assert disc(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 2, 2)


def test_original_init():
    torch.manual_seed(0)
    disc = NLayerDiscriminator().apply(weights_init)
    w = disc.main[8].weight  # 512 x 256 x 4 x 4 values ~ N(0, 0.02)
    assert abs(w.mean().item()) < 1e-3 and w.std().item() == pytest.approx(0.02, rel=0.01)
    bn = disc.main[9]
    assert torch.all(bn.bias == 0) and bn.weight.mean().item() == pytest.approx(1.0, abs=0.005)
    assert 0.01 < bn.weight.std().item() < 0.03
    # conv biases keep PyTorch's default uniform(±1/sqrt(fan_in)) init, as in the original
    bias, bound = disc.main[0].bias, 1 / (3 * 4 * 4) ** 0.5
    assert bias.abs().max() <= bound and bias.abs().max() > bound / 4


def test_actnorm_variant_has_biased_convs_and_actnorm_keys():
    disc = NLayerDiscriminator(input_nc=4, ndf=8, n_layers=2, use_actnorm=True)
    keys = state_dict_manifest(disc)
    assert keys["main.2.bias"] == ((16,), "float32")
    assert keys["main.3.loc"] == ((1, 16, 1, 1), "float32") and keys["main.3.initialized"] == ((), "uint8")
    assert keys["main.5.weight"] == ((32, 16, 4, 4), "float32") and keys["main.8.weight"] == ((1, 32, 4, 4), "float32")


def test_actnorm_data_dependent_init_whitens_the_first_batch():
    norm = ActNorm(5)
    x = torch.randn(4, 5, 6, 7, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 6).view(1, 5, 1, 1) + 3
    y = norm(x)
    flat = y.transpose(0, 1).reshape(5, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1), torch.ones(5), atol=1e-5, rtol=0)
    assert norm.initialized.item() == 1
    loc = norm.loc.detach().clone()
    norm(x * 10)  # later batches do not re-initialise
    assert torch.equal(norm.loc, loc)


def test_actnorm_does_not_initialise_in_eval_mode():
    norm = ActNorm(3).eval()
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(norm(x), x) and norm.initialized.item() == 0


def test_hinge_and_vanilla_d_loss_hand_values():
    real = torch.tensor([2.0, 0.5, -1.0, 0.0])
    fake = torch.tensor([-2.0, 0.5, 1.0, -0.5])
    # hinge: relu(1 - real) = [0, .5, 2, 1] -> mean .875; relu(1 + fake) = [0, 1.5, 2, .5] -> mean 1.0
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.875 + 1.0))
    softplus = lambda v: torch.log1p(torch.exp(torch.tensor(v))).item()
    expected = 0.5 * (sum(softplus(-v) for v in real.tolist()) / 4 + sum(softplus(v) for v in fake.tolist()) / 4)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)


def test_adopt_weight_switches_at_the_threshold():
    assert adopt_weight(0.7, global_step=9, threshold=10) == 0.0
    assert adopt_weight(0.7, global_step=10, threshold=10) == 0.7
    assert adopt_weight(0.7, global_step=0) == 0.7


def test_gradients_reach_every_layer():
    disc = NLayerDiscriminator(ndf=8).apply(weights_init)
    disc(torch.randn(2, 3, 32, 32)).mean().backward()
    assert all(m.weight.grad.abs().sum() > 0 for m in disc.modules() if isinstance(m, nn.Conv2d))


def test_actnorm_logdet_reverse_and_vectors() -> None:
    """taming's ActNorm(num_features, logdet=False, affine=True, allow_reverse_init=False) options."""
    torch.manual_seed(0)
    norm = ActNorm(3, logdet=True)
    x = torch.randn(4, 3, 5, 6) * 2 + 1
    h, logdet = norm(x)
    assert logdet.shape == (4,)
    torch.testing.assert_close(logdet, torch.full((4,), 30 * torch.log(norm.scale.abs()).sum().item()))
    torch.testing.assert_close(norm(h, reverse=True), x, rtol=1e-5, atol=1e-5)
    vectors = ActNorm(3)
    v = torch.randn(8, 3)
    out = vectors(v)
    assert out.shape == (8, 3)
    torch.testing.assert_close(out.mean(0), torch.zeros(3), rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match="allow_reverse_init=True"):
        ActNorm(3).reverse(v)
    inverse = ActNorm(3, allow_reverse_init=True)
    back = inverse.reverse(v)  # initialised from v itself (loc = −mean, scale = 1/std), then inverted
    assert inverse.initialized.item() == 1
    torch.testing.assert_close(back, v * (v.std(0) + 1e-6) + v.mean(0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="affine"):
        ActNorm(3, affine=False)
