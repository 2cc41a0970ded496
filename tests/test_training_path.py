"""Training takes no fast path: with autograd on, a latent-diffusion training step runs only reference modules and
no private torch op; after ``optimize_for_inference`` the inference modules are in place, do run, and give the
reference numbers within float rounding."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from ldm.inference import optimize_for_inference
from ldm.modules.attention import FeedForward, SpatialTransformer
from ldm.modules.fast.feedforward import GEGLUFeedForwardInference
from ldm.modules.fast.packed_conv import PackedConv2d, onednn_packing_available
from ldm.util import instantiate_from_config
from tests.helpers import REFDATA

FAST_PACKAGE = "ldm.modules.fast"
#: Prefixes of the dispatched op names that only the inference modules call.
PRIVATE_OPS = ("mkldnn._", "aten.gelu_.")


class RecordOps(TorchDispatchMode):
    """The names of the aten/mkldnn ops dispatched inside the context."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


def _run_recording(fn: Callable[[], object]) -> tuple[set[type], set[str], object]:
    """Every module class whose forward ran and every op dispatched while ``fn()`` ran, and its result."""
    ran: set[type] = set()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, *_: ran.add(type(module)))
    try:
        with RecordOps() as ops:
            result = fn()
    finally:
        handle.remove()
    return ran, ops.names, result


def _private(ops: set[str]) -> set[str]:
    return {name for name in ops if name.startswith(PRIVATE_OPS)}


def _fast(ran: set[type]) -> set[type]:
    return {kind for kind in ran if kind.__module__.startswith(FAST_PACKAGE)}


@pytest.fixture
def tiny_ldm() -> torch.nn.Module:
    torch.manual_seed(0)
    return instantiate_from_config(OmegaConf.load(REFDATA / "configs" / "ldm_tiny.yaml").model)


def test_a_training_step_runs_only_reference_modules(tiny_ldm) -> None:
    gen = torch.Generator().manual_seed(1)
    batch = {"image": torch.rand(2, 32, 32, 3, generator=gen) * 2 - 1, "class_label": torch.tensor([1, 7])}
    tiny_ldm.train()

    def step() -> torch.Tensor:
        loss, _ = tiny_ldm.shared_step(batch)
        loss.backward()
        return loss

    ran, ops, loss = _run_recording(step)
    assert torch.isfinite(loss)
    assert {FeedForward, SpatialTransformer} <= ran  # the recorder sees the UNet's blocks
    assert _fast(ran) == set() and _private(ops) == set()
    assert all(p.grad is not None for p in tiny_ldm.model.parameters())


def test_optimize_for_inference_swaps_in_fast_modules_with_the_reference_numbers(tiny_ldm) -> None:
    model = tiny_ldm.eval()
    gen = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([10, 700])
    with torch.no_grad():
        c = model.get_learned_conditioning({"class_label": torch.tensor([1, 7])})
        ran_ref, ops_ref, (eps_ref, image_ref) = _run_recording(
            lambda: (model.apply_model(x, t, c), model.decode_first_stage(x))
        )
    assert _fast(ran_ref) == set() and _private(ops_ref) == set()

    prepack = onednn_packing_available()
    optimize_for_inference(model, fast_blocks=True, prepack=prepack)
    with torch.no_grad():
        ran, ops, (eps, image) = _run_recording(lambda: (model.apply_model(x, t, c), model.decode_first_stage(x)))
    assert GEGLUFeedForwardInference in ran and FeedForward not in ran
    if prepack:
        assert PackedConv2d in ran and "mkldnn._convolution_pointwise.default" in ops
    torch.testing.assert_close(eps, eps_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(image, image_ref, rtol=1e-5, atol=1e-5)
