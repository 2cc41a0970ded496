"""ldm.modules.fast.gemm_conv and the FastTrainingConvs callback: convs as GEMMs equal F.conv2d and its gradients,
take the GEMM route only where the thresholds say, keep parameters and state-dict keys, and are swapped in by
main.py's default callback for CPU fits of diffusion models only."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

import main
from ldm.callbacks import FastTrainingConvs
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.fast import gemm_conv
from ldm.modules.fast.gemm_conv import GemmConv2d, gemm_conv2d, swap_gemm_convs
from tests.fakes import make_ddpm

# (in, out, kernel, stride, padding, dilation, bias, input height, input width)
GEOMETRIES = [
    (8, 16, 3, 1, 1, 1, True, 5, 6),
    (8, 16, 3, 2, 1, 1, True, 7, 8),  # the UNet's Downsample
    (8, 4, 1, 1, 0, 1, False, 6, 6),  # a ResBlock's 1x1 skip
    (3, 5, 3, 1, 2, 2, True, 9, 7),
    (4, 6, (3, 1), (2, 1), (1, 0), 1, True, 8, 5),
]


def _conv(cin, cout, kernel, stride, padding, dilation, bias, dtype=torch.float64) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=bias).to(dtype)


def _output_and_grads(fn, x: torch.Tensor, params: list[torch.Tensor], grad_seed: int = 1):
    out = fn(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=out.dtype)
    return [out.detach(), *torch.autograd.grad(out, [x, *params], grad)]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_gemm_conv2d_equals_conv2d_and_its_gradients(geometry) -> None:
    cin, cout, kernel, stride, padding, dilation, bias, height, width = geometry
    conv = _conv(cin, cout, kernel, stride, padding, dilation, bias)
    x = torch.randn(3, cin, height, width, dtype=torch.float64, requires_grad=True)
    params = list(conv.parameters())
    reference = _output_and_grads(conv, x, params)
    gemm = _output_and_grads(lambda x: gemm_conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding,
                                                   conv.dilation), x, params)
    assert len(gemm) == len(reference) == 3 + bias  # output, d input, d weight (, d bias)
    for ours, expected in zip(gemm, reference, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_gemm_conv2d_passes_gradcheck_and_gradgradcheck() -> None:
    conv = _conv(3, 4, 3, 2, 1, 1, True)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    inputs = (x, conv.weight, conv.bias)
    assert torch.autograd.gradcheck(lambda x, w, b: gemm_conv2d(x, w, b, (2, 2), (1, 1)), inputs)
    assert torch.autograd.gradgradcheck(lambda x, w, b: gemm_conv2d(x, w, b, (2, 2), (1, 1)), inputs)


def test_a_gradient_penalty_through_gemm_conv2d_equals_the_reference() -> None:
    """R1-style: the weight's gradient of |d out / d x|² needs the backward itself differentiated."""
    conv = _conv(3, 4, 3, 1, 1, 1, True)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)

    def penalty_grad(fn) -> torch.Tensor:
        (grad_x,) = torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)
        (grad_w,) = torch.autograd.grad(grad_x.square().sum(), conv.weight)
        return grad_w

    expected = penalty_grad(conv)
    assert expected.abs().max() > 0
    torch.testing.assert_close(penalty_grad(lambda x: gemm_conv2d(x, conv.weight, conv.bias, padding=(1, 1))),
                               expected, rtol=1e-10, atol=1e-12)


def test_gemm_conv2d_takes_channels_last_inputs_and_strided_gradients_in_float32() -> None:
    conv = _conv(16, 24, 3, 1, 1, 1, True, torch.float32)
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    params = list(conv.parameters())
    reference = _output_and_grads(conv, x, params)
    gemm = _output_and_grads(lambda x: gemm_conv2d(x, conv.weight, conv.bias, (1, 1), (1, 1)).transpose(2, 3),
                             x, params)
    gemm[0] = gemm[0].transpose(2, 3)
    reference_t = _output_and_grads(lambda x: conv(x).transpose(2, 3), x, params)
    reference_t[0] = reference_t[0].transpose(2, 3)
    torch.testing.assert_close(reference_t[0], reference[0])
    for ours, expected in zip(gemm, reference_t, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# GemmConv2d: the route and the parameters


def test_from_conv_shares_the_parameters_and_keeps_the_state_dict() -> None:
    conv = _conv(4, 8, 3, 1, 1, 1, True, torch.float32)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    gemm = GemmConv2d.from_conv(conv, max_positions=7, min_weight_bytes=5)
    assert gemm.weight is conv.weight and gemm.bias is conv.bias
    assert isinstance(gemm, nn.Conv2d) and gemm.training == conv.training
    assert list(gemm.state_dict()) == list(before)
    for key, value in gemm.state_dict().items():
        assert torch.equal(value, before[key])
    assert "max_positions=7, min_weight_bytes=5" in repr(gemm)


@pytest.fixture
def gemm_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    real = gemm_conv.gemm_conv2d

    def spy(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(gemm_conv, "gemm_conv2d", spy)
    return calls


def test_the_gemm_route_runs_only_within_the_thresholds(gemm_calls) -> None:
    conv = _conv(4, 8, 3, 2, 1, 1, True, torch.float32)  # 4·8·9 floats = 1152 bytes
    gemm = GemmConv2d.from_conv(conv, max_positions=2 * 4 * 4, min_weight_bytes=1152)
    within = torch.randn(2, 4, 8, 8)  # stride 2: 2 x 4 x 4 = 32 output positions
    beyond = torch.randn(2, 4, 10, 10)  # 2 x 5 x 5 = 50
    torch.testing.assert_close(gemm(within), conv(within), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gemm(beyond), conv(beyond))
    assert gemm_calls == [(2, 4, 8, 8)]
    gemm.min_weight_bytes = 1153
    gemm(within)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        GemmConv2d.from_conv(conv, 10**6, 0)(within)
    assert gemm_calls == [(2, 4, 8, 8)]


def test_swap_gemm_convs_takes_large_plain_convs_only() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),  # 1152 bytes
        nn.Conv2d(8, 8, 1),  # 256 bytes: below the threshold
        nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 8, 3, padding="same"),
        nn.Conv2d(4, 8, 3, padding=1, groups=2),
        nn.Sequential(nn.Conv2d(8, 16, 3)),  # 4608 bytes, nested
        nn.Conv1d(4, 8, 3),
    )
    keys = list(model.state_dict())
    params = list(model.parameters())
    assert swap_gemm_convs(model, max_positions=64, min_weight_bytes=1000) == 2
    assert [type(m) for m in (model[0], model[1], model[2], model[3], model[4], model[5][0])] == [
        GemmConv2d, nn.Conv2d, nn.Conv2d, nn.Conv2d, nn.Conv2d, GemmConv2d]
    assert model[5][0].max_positions == 64
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))


def tiny_unet() -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2],
                     num_res_blocks=1, channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True,
                     transformer_depth=1, context_dim=8)


def test_a_swapped_unet_trains_as_the_reference(gemm_calls) -> None:
    reference = tiny_unet()
    for p in reference.parameters():
        torch.nn.init.normal_(p, std=0.1)
    swapped = copy.deepcopy(reference)
    count = swap_gemm_convs(swapped, max_positions=2 * 8 * 8, min_weight_bytes=0)
    assert count == sum(isinstance(m, nn.Conv2d) for m in reference.modules())
    conv_calls: list[str] = []
    for name, module in reference.named_modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(lambda *_, name=name: conv_calls.append(name))
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3, 70]), torch.randn(2, 5, 8)
    target = torch.randn(2, 4, 8, 8)
    grads = []
    for model in (reference, swapped):
        loss = F.mse_loss(model(x, t, context=context), target)
        loss.backward()
        grads.append((loss.detach(), [p.grad for p in model.parameters()]))
    assert len(gemm_calls) == len(conv_calls) > 0  # every conv call ran as GEMMs (8x8 and 4x4 levels, batch 2)
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-7)
    for ours, expected in zip(grads[1][1], grads[0][1], strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# FastTrainingConvs


def _trainer(device: str) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))


def _ddpm_on_unet():
    return make_ddpm(unet_config={"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
        "image_size": 8, "in_channels": 3, "out_channels": 3, "model_channels": 32, "attention_resolutions": [],
        "num_res_blocks": 1, "channel_mult": [1, 2], "num_heads": 2}}, image_size=8, channels=3, timesteps=10)


def _gemm_convs(module: nn.Module) -> int:
    return sum(isinstance(m, GemmConv2d) for m in module.modules())


def test_the_callback_swaps_a_ddpms_convs_for_cpu_fits_only() -> None:
    model = _ddpm_on_unet()
    keys = list(model.state_dict())
    for stage, device, enabled in (("validate", "cpu", True), ("fit", "meta", True), ("fit", "cpu", False)):
        callback = FastTrainingConvs(enabled=enabled, min_weight_bytes=0)
        callback.setup(_trainer(device), model, stage)
        assert callback.swapped == 0 and _gemm_convs(model) == 0
    callback = FastTrainingConvs(max_positions=99, min_weight_bytes=0)
    callback.setup(_trainer("cpu"), model, "fit")
    assert callback.swapped == _gemm_convs(model.model) > 0
    assert {m.max_positions for m in model.modules() if isinstance(m, GemmConv2d)} == {99}
    assert list(model.state_dict()) == keys
    other = nn.Sequential(nn.Conv2d(3, 3, 3))
    FastTrainingConvs(min_weight_bytes=0).setup(_trainer("cpu"), other, "fit")
    assert _gemm_convs(other) == 0


def test_the_default_thresholds_leave_small_models_alone() -> None:
    model = _ddpm_on_unet()
    callback = FastTrainingConvs()
    callback.setup(_trainer("cpu"), model, "fit")
    assert callback.swapped == 0 and _gemm_convs(model) == 0


def test_main_adds_the_callback_by_default_and_a_config_turns_it_off() -> None:
    opt = main.get_parser().parse_args([])
    paths = main.RunPaths(nowname="n", logdir="logs/n", resume_ckpt=None, saved_configs=[])
    modelckpt = OmegaConf.create({"target": "pytorch_lightning.callbacks.ModelCheckpoint"})
    default = main.callbacks_config(opt, "now", paths, OmegaConf.create(), OmegaConf.create(), modelckpt)
    assert default.fast_training.target == "ldm.callbacks.FastTrainingConvs"
    assert default.fast_training.params.enabled is True
    off = OmegaConf.create({"callbacks": {"fast_training": {"params": {"enabled": False}}}})
    callbacks = main.callbacks_config(opt, "now", paths, OmegaConf.create(), off, modelckpt)
    assert callbacks.fast_training.params.enabled is False
