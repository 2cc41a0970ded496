"""The small original helpers provided for client code: closed forms and gradients against plain autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm.models.diffusion.dpm_solver.sampler import MODEL_TYPES
from ldm.models.diffusion.sampling_util import append_dims, norm_thresholding, spatial_norm_thresholding
from ldm.modules.diffusionmodules.openaimodel import Timestep
from ldm.modules.diffusionmodules.util import CheckpointFunction, timestep_embedding
from ldm.modules.encoders.modules import IdentityEncoder, disabled_train
from ldm.util import autocast, parallel_data_prefetch


def test_append_dims_and_its_error():
    assert append_dims(torch.ones(3), 4).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError, match="target_dims"):
        append_dims(torch.ones(2, 2), 1)


def test_norm_thresholding_caps_the_rms_of_each_sample():
    x0 = torch.stack([torch.full((2, 3, 3), 4.0), torch.full((2, 3, 3), 0.5)])
    out = norm_thresholding(x0, 1.0)
    assert torch.allclose(out[0], torch.ones(2, 3, 3))  # RMS 4 scaled down to 1
    assert torch.equal(out[1], x0[1])  # RMS 0.5 <= 1: unchanged


def test_spatial_norm_thresholding_works_per_pixel():
    x0 = torch.tensor([[[[3.0, 0.1]], [[4.0, 0.1]]]])  # (1, 2, 1, 2): pixel RMS sqrt(12.5) and 0.1
    out = spatial_norm_thresholding(x0, 1.0)
    assert torch.allclose(out[0, :, 0, 0], x0[0, :, 0, 0] / 12.5**0.5)
    assert torch.equal(out[..., 1], x0[..., 1])


def test_checkpoint_function_gives_the_gradients_of_the_plain_call():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(3, 4, requires_grad=True)

    def run(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.tanh(layer(a))
        return hidden, hidden.square()

    first, second = CheckpointFunction.apply(run, 1, x, *layer.parameters())
    (first.sum() + 2 * second.sum()).backward()
    got = [x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone()]
    x.grad = None
    layer.zero_grad()
    first, second = run(x)
    (first.sum() + 2 * second.sum()).backward()
    for ours, plain in zip(got, [x.grad, layer.weight.grad, layer.bias.grad], strict=True):
        assert torch.allclose(ours, plain)


def test_timestep_module_is_the_embedding():
    t = torch.tensor([0.0, 5.0, 999.0])
    assert torch.equal(Timestep(8)(t), timestep_embedding(t, 8))


def test_identity_encoder_disabled_train_and_model_types():
    assert IdentityEncoder().encode("x") == "x"
    module = torch.nn.Linear(1, 1).eval()
    assert disabled_train(module, True) is module and not module.training
    assert MODEL_TYPES == {"eps": "noise", "v": "v"}


def test_autocast_decorator_passes_arguments_through():
    assert autocast(lambda a, b=1: a + b)(1, b=2) == 3


def _double_with_id(part: list[int], worker_id: int) -> list[tuple[int, int]]:
    return [(2 * value, worker_id) for value in part]


def test_parallel_data_prefetch_splits_runs_and_joins_in_order():
    assert np.array_equal(parallel_data_prefetch(np.square, list(range(7)), 3), np.arange(7) ** 2)
    listed = parallel_data_prefetch(_double_with_id, list(range(5)), 2, "list", cpu_intensive=False, use_worker_id=True)
    assert listed == [(0, 0), (2, 0), (4, 0), (6, 1), (8, 1)]  # parts of ceil(5 / 2) = 3 items
    parts = parallel_data_prefetch(len, {"a": 1, "b": 2, "c": 3}, 2, target_data_type="parts", cpu_intensive=False)
    assert parts == [2, 1]
    with pytest.raises(ValueError, match="np.ndarray"):
        parallel_data_prefetch(len, np.zeros(3), 2, target_data_type="list")
    with pytest.raises(TypeError, match="iterable"):
        parallel_data_prefetch(len, 3, 2)


def test_memory_efficient_cross_attention_is_the_sdpa_cross_attention():
    from ldm.modules.attention import XFORMERS_IS_AVAILBLE, CrossAttention, MemoryEfficientCrossAttention

    assert XFORMERS_IS_AVAILBLE is False
    layer = MemoryEfficientCrossAttention(query_dim=8, context_dim=4, heads=2, dim_head=4)
    assert isinstance(layer, CrossAttention)
    assert layer(torch.randn(1, 3, 8), context=torch.randn(1, 5, 4)).shape == (1, 3, 8)
