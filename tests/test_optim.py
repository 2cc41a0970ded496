"""ldm.optim: the fused kernel where torch has one, the multi-tensor update elsewhere, Adam's numbers either way."""

import pytest
import torch

from ldm.optim import adam


def _params(seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((7, 5), (5,), (3, 2, 3, 3))]


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_cpu_parameters_get_the_fused_update_with_the_per_tensor_numbers(cls):
    params, reference_params = _params(0), _params(0)
    opt = adam(cls, params, lr=1e-2, betas=(0.5, 0.9))
    reference = cls(reference_params, lr=1e-2, betas=(0.5, 0.9), foreach=False)
    assert opt.defaults["fused"] is True and opt.defaults["betas"] == (0.5, 0.9)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p, q in zip(params, reference_params):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        opt.step()
        reference.step()
    for p, q, start in zip(params, reference_params, _params(0)):
        assert not torch.equal(p, start)
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(opt.state[params[0]]["exp_avg_sq"], reference.state[reference_params[0]]["exp_avg_sq"])


def test_parameters_without_a_fused_kernel_get_the_multi_tensor_update():
    with torch.device("meta"):
        params = [torch.nn.Parameter(torch.empty(3, 3))]
    opt = adam(torch.optim.AdamW, params, lr=1e-3)
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
