"""VectorQuantizer2 on a hand-computable case: indices, z_q, loss weighting, straight-through, remapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.modules.vqvae import VectorQuantizer, VectorQuantizer2

CODEBOOK = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
# z as (B=1, C=2, H=1, W=4): columns (0.1, 0.1) -> 0, (0.9, -0.2) -> 1, (0.2, 1.5) -> 2, (-0.3, 0.2) -> 0
Z_COLUMNS = torch.tensor([[0.1, 0.1], [0.9, -0.2], [0.2, 1.5], [-0.3, 0.2]])
EXPECTED_INDICES = torch.tensor([0, 1, 2, 0])


def _quantizer(**kwargs) -> VectorQuantizer2:
    quantizer = VectorQuantizer2(n_e=3, e_dim=2, beta=0.25, **kwargs)
    with torch.no_grad():
        quantizer.embedding.weight.copy_(CODEBOOK)
    return quantizer


def _z() -> torch.Tensor:
    return Z_COLUMNS.t().reshape(1, 2, 1, 4).clone().requires_grad_(True)


def test_nearest_codes_and_quantized_values() -> None:
    assert VectorQuantizer is VectorQuantizer2
    z_q, loss, (perplexity, encodings, indices) = _quantizer()(_z())
    assert perplexity is None and encodings is None
    assert torch.equal(indices, EXPECTED_INDICES)
    torch.testing.assert_close(z_q, CODEBOOK[EXPECTED_INDICES].t().reshape(1, 2, 1, 4))
    mse = ((CODEBOOK[EXPECTED_INDICES] - Z_COLUMNS) ** 2).mean()
    torch.testing.assert_close(loss, 1.25 * mse)  # both terms have the value of the MSE; they differ in gradients


@pytest.mark.parametrize(("legacy", "z_weight", "codebook_weight"), [(True, 1.0, 0.25), (False, 0.25, 1.0)])
def test_loss_weighting_of_commitment_and_codebook_terms(legacy: bool, z_weight: float,
                                                         codebook_weight: float) -> None:
    quantizer, z = _quantizer(legacy=legacy), _z()
    _, loss, _ = quantizer(z)
    loss.backward()
    chosen = CODEBOOK[EXPECTED_INDICES]
    n = Z_COLUMNS.numel()
    # d/dz of w·mean((z − sg[e])²) = 2w (z − e) / n
    expected_dz = (2 * z_weight * (Z_COLUMNS - chosen) / n).t().reshape(1, 2, 1, 4)
    torch.testing.assert_close(z.grad, expected_dz)
    # d/de_k of w·mean((e − sg[z])²) = 2w Σ_{positions with code k} (e_k − z) / n
    per_position = 2 * codebook_weight * (chosen - Z_COLUMNS) / n
    expected_de = torch.zeros_like(CODEBOOK).index_add_(0, EXPECTED_INDICES, per_position)
    torch.testing.assert_close(quantizer.embedding.weight.grad, expected_de)


def test_straight_through_gradient() -> None:
    z = _z()
    z_q, _, _ = _quantizer()(z)
    upstream = torch.randn_like(z_q)
    (z_q * upstream).sum().backward()
    torch.testing.assert_close(z.grad, upstream)  # dL/dz = dL/dz_q


def test_sane_index_shape() -> None:
    z = torch.cat([_z(), _z()]).detach()  # (2, 2, 1, 4)
    _, _, (_, _, indices) = _quantizer(sane_index_shape=True)(z)
    assert indices.shape == (2, 1, 4)
    assert torch.equal(indices, EXPECTED_INDICES.reshape(1, 1, 4).expand(2, 1, 4))


def test_remap_with_extra_unknown_index(tmp_path: Path) -> None:
    used = tmp_path / "used.npy"
    np.save(used, np.array([2, 0]))
    quantizer = _quantizer(remap=str(used), unknown_index="extra")
    assert quantizer.re_embed == 3 and quantizer.unknown_index == 2
    _, _, (_, _, indices) = quantizer(_z())
    # code 2 -> position 0, code 0 -> position 1, code 1 (not used) -> the extra index 2; shape (N, 1)
    assert torch.equal(indices, torch.tensor([[1], [2], [0], [1]]))
    entries = quantizer.get_codebook_entry(indices.reshape(-1), shape=(1, 1, 4, 2))
    # the extra index maps back to used[0] = code 2
    torch.testing.assert_close(entries, CODEBOOK[[0, 2, 2, 0]].t().reshape(1, 2, 1, 4))


def test_remap_with_integer_and_random_unknown_index(tmp_path: Path) -> None:
    used = tmp_path / "used.npy"
    np.save(used, np.array([2, 0]))
    _, _, (_, _, indices) = _quantizer(remap=str(used), unknown_index=0)(_z())
    assert torch.equal(indices.reshape(-1), torch.tensor([1, 0, 0, 1]))
    torch.manual_seed(0)
    _, _, (_, _, indices) = _quantizer(remap=str(used), unknown_index="random")(_z())
    assert indices[1].item() in (0, 1) and torch.equal(indices.reshape(-1)[[0, 2, 3]], torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="unknown_index='other'"):
        _quantizer(remap=str(used), unknown_index="other")


def test_get_codebook_entry_shapes() -> None:
    quantizer = _quantizer()
    torch.testing.assert_close(quantizer.get_codebook_entry(torch.tensor([2, 1]), None), CODEBOOK[[2, 1]])
    entries = quantizer.get_codebook_entry(EXPECTED_INDICES, shape=(1, 1, 4, 2))
    torch.testing.assert_close(entries, CODEBOOK[EXPECTED_INDICES].t().reshape(1, 2, 1, 4))


def test_state_dict_and_init() -> None:
    quantizer = VectorQuantizer2(n_e=16, e_dim=4, beta=0.25)
    assert list(quantizer.state_dict()) == ["embedding.weight"]
    assert quantizer.embedding.weight.abs().max() <= 1 / 16


def test_gumbel_compatible_keywords_of_the_original_forward() -> None:
    quantizer = _quantizer()
    z_q, _, (_, _, indices) = quantizer(_z(), temp=1.0, rescale_logits=False, return_logits=False)
    assert torch.equal(indices, EXPECTED_INDICES)
    torch.testing.assert_close(z_q, quantizer(_z())[0])
    for bad in ({"temp": 0.5}, {"rescale_logits": True}, {"return_logits": True}):
        with pytest.raises(ValueError, match="interface compatibility"):
            quantizer(_z(), **bad)
