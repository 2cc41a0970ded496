"""The original MiDaS module layout ``ldm.modules.midas.midas.*`` (SD 2.x): names, signatures, keys, outputs.

``PINNED`` was produced by the original code (Stability-AI/stablediffusion ``ldm/modules/midas/midas``, timm
1.0.31, torch 2.x CPU fp32; its torch.hub encoders built locally: torchvision's ``resnext101_32x8d`` for the
WSL-Images model, ``geffnet`` 1.0.2 ``tf_efficientnet_lite3`` for gen-efficientnet): for each network the sha256 of
its sorted ``key<TAB>shape`` lines, its key count, and ``avg_pool2d(depth, 16)`` of the 64x64 output for the input
``INPUT_SEED`` with the weights of :func:`fill_weights`. The original's ``fuse_model`` on MidasNet_small (same
weights) leaves 5 of its 72 batch norms.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.intrinsic import ConvReLU2d

from ldm.checkpoint import save_safetensors
from ldm.modules.midas import dpt
from ldm.modules.midas.backbone import ViTFeatureEncoder
from ldm.modules.midas.midas import blocks, transforms, vit
from ldm.modules.midas.midas.dpt_depth import DPT, DPTDepthModel
from ldm.modules.midas.midas.midas_net import MidasNet
from ldm.modules.midas.midas.midas_net_custom import MidasNet_small, fuse_model
from tests.test_midas import HYBRID_64_POOLED, _tiny_vit

DATA = Path(__file__).parent / "data"
INPUT_SEED = 1


def fill_weights(module: nn.Module, seed: int = 0) -> None:
    """Deterministic weights for every state-dict entry, in sorted key order, from one seeded generator.

    Matrices and kernels ``N(0, 1/fan_in)``; norm scales ``1 + 0.1·N``; BN running variances ``0.5 + U(0, 1)``;
    position embeddings and class tokens ``0.5·N``; other vectors ``0.1·N``; ``num_batches_tracked`` zero.
    """
    gen = torch.Generator().manual_seed(seed)
    state = module.state_dict()
    filled = {}
    for name in sorted(state):
        shape = state[name].shape
        if name.endswith("num_batches_tracked"):
            filled[name] = torch.zeros(shape, dtype=torch.long)
        elif name.endswith("running_var"):
            filled[name] = 0.5 + torch.rand(shape, generator=gen)
        elif name.endswith(("pos_embed", "cls_token")):
            filled[name] = 0.5 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2:
            filled[name] = torch.randn(shape, generator=gen) / state[name][0].numel() ** 0.5
        elif name.endswith("weight"):
            filled[name] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            filled[name] = 0.1 * torch.randn(shape, generator=gen)
    module.load_state_dict(filled, strict=True)


def key_digest(module: nn.Module) -> str:
    """sha256 of the sorted ``key<TAB>shape`` lines of a state dict (a compact fingerprint of its layout)."""
    lines = sorted(f"{key}\t{tuple(value.shape)}" for key, value in module.state_dict().items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _image(seed: int = INPUT_SEED, size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    return torch.rand((1, 3, *size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _build(factory: Any, **kwargs: Any) -> nn.Module:
    """The network built on the meta device (no slow random init), then given :func:`fill_weights`, eval mode."""
    with torch.device("meta"):
        model = factory(**kwargs)
    model = model.to_empty(device="cpu")
    fill_weights(model)
    return model.eval()


# ---------------------------------------------------------------- names and signatures

#: The original constructors and functions: parameter names in order, with defaults where there are any.
ORIGINAL_SIGNATURES: dict[str, list[tuple[Any, ...]]] = {
    "base_model:BaseModel.load": [("path",)],
    "blocks:Interpolate": [("scale_factor",), ("mode",), ("align_corners", False)],
    "blocks:ResidualConvUnit": [("features",)],
    "blocks:FeatureFusionBlock": [("features",)],
    "blocks:ResidualConvUnit_custom": [("features",), ("activation",), ("bn",)],
    "blocks:FeatureFusionBlock_custom": [("features",), ("activation",), ("deconv", False), ("bn", False),
                                         ("expand", False), ("align_corners", True)],
    "dpt_depth:DPT": [("head",), ("features", 256), ("backbone", "vitb_rn50_384"), ("readout", "project"),
                      ("channels_last", False), ("use_bn", False)],
    "dpt_depth:DPTDepthModel": [("path", None), ("non_negative", True), ("**kwargs",)],
    "midas_net:MidasNet": [("path", None), ("features", 256), ("non_negative", True)],
    "midas_net_custom:MidasNet_small": [("path", None), ("features", 64), ("backbone", "efficientnet_lite3"),
                                        ("non_negative", True), ("exportable", True), ("channels_last", False),
                                        ("align_corners", True), ("blocks", {"expand": True})],
    "midas_net_custom:fuse_model": [("m",)],
    "transforms:apply_min_size": [("sample",), ("size",), ("image_interpolation_method", 3)],  # cv2.INTER_AREA
    "transforms:Resize": [("width",), ("height",), ("resize_target", True), ("keep_aspect_ratio", False),
                          ("ensure_multiple_of", 1), ("resize_method", "lower_bound"),
                          ("image_interpolation_method", 3)],
    "transforms:Resize.constrain_to_multiple_of": [("x",), ("min_val", 0), ("max_val", None)],
    "transforms:Resize.get_size": [("width",), ("height",)],
    "transforms:NormalizeImage": [("mean",), ("std",)],
    "transforms:PrepareForNet": [],
    "vit:Slice": [("start_index", 1)],
    "vit:AddReadout": [("start_index", 1)],
    "vit:ProjectReadout": [("in_features",), ("start_index", 1)],
    "vit:Transpose": [("dim0",), ("dim1",)],
    "vit:forward_vit": [("pretrained",), ("x",)],
    "vit:forward_flex": [("self",), ("x",)],
    "vit:get_activation": [("name",)],
    "vit:get_readout_oper": [("vit_features",), ("features",), ("use_readout",), ("start_index", 1)],
}


def _resolve(key: str) -> Any:
    module_name, attribute = key.split(":")
    target: Any = importlib.import_module(f"ldm.modules.midas.midas.{module_name}")
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _parameters(target: Any) -> list[tuple[Any, ...]]:
    described = []
    for param in inspect.signature(target).parameters.values():
        if param.name == "self" and inspect.isfunction(target) and "." in target.__qualname__:
            continue
        if param.kind is param.VAR_KEYWORD:
            described.append((f"**{param.name}",))
        elif param.default is param.empty:
            described.append((param.name,))
        else:
            described.append((param.name, param.default))
    return described


def test_every_original_name_of_the_layout_imports() -> None:
    keys = [line.split("#")[0].strip() for line in (DATA / "original_public_names.txt").read_text().splitlines()]
    layout = [key for key in keys if key.startswith("ldm.modules.midas.midas.")]
    assert len(layout) == 24
    for key in layout:
        module_name, name = key.split(":")
        assert hasattr(importlib.import_module(module_name), name), key


@pytest.mark.parametrize("key", sorted(ORIGINAL_SIGNATURES))
def test_signatures_equal_the_original(key: str) -> None:
    described = _parameters(_resolve(key))
    expected = ORIGINAL_SIGNATURES[key]
    assert [p[0] for p in described] == [p[0] for p in expected]
    for ours, theirs in zip(described, expected, strict=True):
        assert ours[1:] == theirs[1:] or dict(ours[1]) == theirs[1], (key, ours, theirs)


# ---------------------------------------------------------------- networks against the original's numbers

#: name → (factory, kwargs, original key digest, original key count, original avg_pool2d(depth, 16))
PINNED: dict[str, tuple[Any, dict[str, Any], str, int, list[list[float]]]] = {
    "midas_small": (MidasNet_small, {}, "6c36c2dd56851dfb6a4dc69a07e36125fbfe99850aa524053cda5195aebb01d7", 482, [
        [0.141554, 0.288507, 0.132522, 0.0641715],
        [0, 0.0037438, 0.00169584, 0.00623716],
        [2.72101e-05, 5.54114e-05, 0, 0.0390934],
        [0.000288849, 0.00309648, 0.00201423, 0.00240697],
    ]),
    "midas_small_plain": (
        MidasNet_small, {"features": 32, "blocks": {"expand": False}, "align_corners": False, "non_negative": False},
        "192285d3c46b2b2ec3c70f7b35635481f4242af6057c17e1b224e035113857c9", 482, [
            [0.0324621, -0.387538, -0.23941, -0.276404],
            [0.0312566, -0.427838, -0.44722, -0.54776],
            [-0.199287, -0.421523, -0.591823, -0.511602],
            [-0.641469, -1.13421, -0.863791, -0.727527],
        ]),
    "dpt_vitb16": (DPTDepthModel, {"backbone": "vitb16_384"},
                   "a9c46c9a092f644f5a44f93e13f7104266d7be8a84e8ed4805eb89577d288a93", 224, [
        [0.119655, 0.15337, 0.46235, 1.09923],
        [0.173094, 0, 0.0228387, 0.237628],
        [0.00216105, 0, 0, 0.0744532],
        [0.00462142, 0.000152657, 0, 0.0161437],
    ]),
    "dpt_vitb16_ignore": (
        DPTDepthModel, {"backbone": "vitb16_384", "readout": "ignore", "non_negative": False, "features": 32},
        "bb985c2fc95b2df1630212f60fb2bd7739f808019d09b5c901035fd7dbf32ace", 216, [
            [-0.750415, -1.02606, -2.62755, -3.85512],
            [-0.943118, -1.50779, -2.4587, -2.4528],
            [-0.796415, -1.65295, -1.75728, -2.49739],
            [-1.39722, -0.861058, -0.383938, -1.3031],
        ]),
    "dpt_hybrid": (DPTDepthModel, {"backbone": "vitb_rn50_384"},
                   "b96dbc1f832cd8c19a896343ec87dc7f98479908d202956238f81e536d4ae5f7", 368, [
        [0.23619, 1.12619, 0.64205, 1.04504],
        [0.00693772, 0.121529, 0.692303, 0.527775],
        [0, 0, 0.240618, 0.153307],
        [0, 0, 0, 0.139837],
    ]),
    "dpt_hybrid_add_bn": (
        DPTDepthModel, {"backbone": "vitb_rn50_384", "readout": "add", "use_bn": True, "features": 64},
        "5b621051b86449b8a6dadd2403947f57f4fcd087b4580b6fa62c28eee4c35c08", 444, [
            [5.81446, 8.39087, 6.16813, 5.13747],
            [8.79084, 10.7184, 7.04454, 8.06017],
            [8.36527, 8.88803, 6.49144, 4.97319],
            [8.97385, 7.93965, 6.79227, 4.0737],
        ]),
    "midas_net": (MidasNet, {}, "1e8ba201c35b4eaad2f2ac721aa5b26107b237ebb1026fe3a8879b06ab15cfd5", 666, [
        [5.74223, 5.1301, 4.81532, 4.6456],
        [9.57134, 7.97233, 6.55788, 5.24628],
        [9.03077, 7.03217, 5.44761, 4.77836],
        [8.59299, 6.83265, 5.55045, 4.39322],
    ]),
    "dpt_vitl16": (DPTDepthModel, {"backbone": "vitl16_384", "non_negative": False},
                   "bf8942206f9434de8d4af5aa3cddc111c52ce1e2de27af0b0b441e1d9ddc5c6e", 368, [
        [-1.81466, -3.22216, -3.48434, -1.79353],
        [-2.82358, -3.93487, -4.23119, -2.59158],
        [-3.16051, -2.49455, -2.60175, -1.54283],
        [-2.3279, -1.37844, -1.30486, -0.608862],
    ]),
}
HEAVY = {"dpt_vitl16", "dpt_hybrid"}  # the hybrid: also checked by the hybrid_pair tests below


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in PINNED])
def test_network_has_the_original_keys_and_output(name: str) -> None:
    factory, kwargs, digest, count, pooled = PINNED[name]
    model = _build(factory, **kwargs)
    assert len(model.state_dict()) == count
    assert key_digest(model) == digest
    with torch.no_grad():
        depth = model(_image())
    assert depth.shape == (1, 64, 64)
    torch.testing.assert_close(F.avg_pool2d(depth[:, None], 16)[0, 0], torch.tensor(pooled), atol=1e-4, rtol=1e-4)


def test_dpt_large_has_the_original_key_layout() -> None:
    """The layout half of the slow ViT-L case, on the meta device."""
    with torch.device("meta"):
        model = DPTDepthModel(backbone="vitl16_384")
    assert key_digest(model) == PINNED["dpt_vitl16"][2] and len(model.state_dict()) == PINNED["dpt_vitl16"][3]


# ---------------------------------------------------------------- the original path is our DPT


@pytest.fixture(scope="module")
def hybrid_pair() -> tuple[DPTDepthModel, dpt.DPTDepthModel]:
    """The SD 2.x depth network on both paths, the same weights (those of tests/test_midas.py's fill)."""
    from tests.test_midas import _deterministic_weights

    with torch.device("meta"):
        original_path, ours = DPTDepthModel(backbone="vitb_rn50_384"), dpt.DPTDepthModel(backbone="vitb_rn50_384")
    original_path, ours = original_path.to_empty(device="cpu").eval(), ours.to_empty(device="cpu").eval()
    _deterministic_weights(original_path)
    ours.load_state_dict(original_path.state_dict(), strict=True)
    return original_path, ours


def test_original_path_dpt_is_our_dpt_with_the_same_keys_and_output(hybrid_pair) -> None:
    original_path, ours = hybrid_pair
    assert isinstance(original_path, dpt.DPT)
    assert list(original_path.state_dict()) == list(ours.state_dict()) and len(ours.state_dict()) == 368
    assert key_digest(original_path) == PINNED["dpt_hybrid"][2]
    pinned, other = _image(1), _image(2)
    with torch.no_grad():
        depth = original_path(torch.cat([pinned, other]))
        assert torch.equal(depth, ours(torch.cat([pinned, other])))
    assert depth.shape == (2, 64, 64)
    torch.testing.assert_close(F.avg_pool2d(depth[:1, None], 8)[0, 0], torch.tensor(HYBRID_64_POOLED),
                               atol=1e-4, rtol=1e-4)


def test_weights_saved_from_one_path_load_strictly_in_the_other(hybrid_pair, tmp_path) -> None:
    """Ours → file → the original path's ``load`` (the fixture already loaded the other way, in memory)."""
    original_path, ours = hybrid_pair
    path = tmp_path / "dpt_hybrid.pt"
    torch.save(ours.state_dict(), path)
    with torch.device("meta"):
        reloaded = DPTDepthModel(backbone="vitb_rn50_384")
    reloaded = reloaded.to_empty(device="cpu")
    reloaded.load(path)  # BaseModel.load: safe loader, strict
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in original_path.state_dict().items())


@pytest.mark.parametrize("fmt", ["safetensors", "training"])
def test_load_reads_safetensors_and_training_checkpoints(tmp_path, fmt: str) -> None:
    source = _build(MidasNet_small)
    path = tmp_path / f"small.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        save_safetensors(path, source.state_dict())
    else:  # the original training checkpoints: {"model": ..., "optimizer": ...}
        torch.save({"model": source.state_dict(), "optimizer": {"state": {}, "param_groups": []}}, path)
    with torch.device("meta"):
        reloaded = MidasNet_small()
    reloaded = reloaded.to_empty(device="cpu")
    reloaded.load(path)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in source.state_dict().items())


def test_path_argument_loads_the_file(tmp_path) -> None:
    source = _build(MidasNet_small)
    path = tmp_path / "small.pt"
    torch.save(source.state_dict(), path)
    loaded = MidasNet_small(path=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(_image()), source(_image()))
    truncated = dict(source.state_dict())
    truncated.pop("scratch.output_conv.4.bias")
    torch.save(truncated, path)
    with pytest.raises(RuntimeError, match="output_conv.4.bias"):
        MidasNet_small(path=path)


def test_unknown_backbones_and_readouts_are_refused() -> None:
    with pytest.raises(ValueError, match="vitb16_384"):
        DPT(nn.Identity(), backbone="resnext101_wsl")
    with pytest.raises(ValueError, match="project"):
        DPTDepthModel(backbone="vitb16_384", readout="mean")
    with pytest.raises(ValueError, match="efficientnet_lite3"):
        MidasNet_small(backbone="vitb16_384")


def test_channels_last_changes_the_layout_not_the_numbers() -> None:
    model = _build(MidasNet_small)
    with torch.no_grad():
        plain = model(_image())
        model.channels_last = True
        torch.testing.assert_close(model(_image()), plain, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- fuse_model


def test_fuse_model_folds_conv_bn_runs_as_the_original_rule() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Tanh(),
                        nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))  # last pair: nothing follows, not fused
    fill_weights(net)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = net(x)
        fuse_model(net)
        after = net(x)
    assert isinstance(net[0], ConvReLU2d) and isinstance(net[1], nn.Identity) and isinstance(net[2], nn.Identity)
    assert type(net[3]) is nn.Conv2d and net[3].bias is not None and isinstance(net[4], nn.Identity)
    assert isinstance(net[7], nn.BatchNorm2d)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_fuse_model_on_midas_small_fuses_as_many_norms_as_the_original() -> None:
    model = _build(MidasNet_small)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        before = model(_image())
        fuse_model(model)
        after = model(_image())
    left = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert (len(norms), len(left)) == (72, 5)  # the original (gen-efficientnet encoder): 72 before, 5 after
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- blocks


def _identity_kernels(*convs: nn.Conv2d, scale: float = 1.0) -> None:
    with torch.no_grad():
        for conv in convs:
            conv.weight.zero_()
            for c in range(conv.out_channels):
                conv.weight[c, c, 1, 1] = scale
            conv.bias.zero_()


def test_residual_units_skip_relu_of_x_in_midasnet_and_x_in_the_custom_unit() -> None:
    x = torch.randn(1, 2, 5, 5)
    original = blocks.ResidualConvUnit(2)
    custom = blocks.ResidualConvUnit_custom(2, nn.ReLU(), bn=False)
    for unit in (original, custom):
        _identity_kernels(unit.conv1, unit.conv2, scale=0.0)
    kept = x.clone()
    torch.testing.assert_close(original(x), x.clamp(min=0))  # zero branch: the skip is ReLU(x)
    torch.testing.assert_close(custom(x), x)
    assert torch.equal(x, kept)  # the input is not modified in place
    _identity_kernels(original.conv1, original.conv2)
    torch.testing.assert_close(original(x), 2 * x.clamp(min=0))  # r + ReLU(r), r = ReLU(x)


def test_custom_unit_with_bn_has_the_norm_keys_and_applies_them() -> None:
    unit = blocks.ResidualConvUnit_custom(3, nn.ReLU(), bn=True)
    assert {k.split(".")[0] for k in unit.state_dict()} == {"conv1", "conv2", "bn1", "bn2"}
    _identity_kernels(unit.conv1, unit.conv2)
    unit.eval()
    with torch.no_grad():
        unit.bn1.running_var.fill_(4.0)  # bn: (h - 0) / sqrt(4 + eps)
        unit.bn2.running_var.fill_(4.0)
    x = torch.rand(1, 3, 4, 4)  # non-negative: every ReLU is the identity
    torch.testing.assert_close(unit(x), x + x / 4, atol=1e-4, rtol=1e-4)


def test_fusion_blocks_shapes_keys_and_upsampling() -> None:
    coarse, skip = torch.randn(2, 8, 3, 4), torch.randn(2, 8, 3, 4)
    old = blocks.FeatureFusionBlock(8)
    assert not any(k.startswith("out_conv") for k in old.state_dict())
    assert old(coarse).shape == old(coarse, skip).shape == (2, 8, 6, 8)
    for unit in (old.resConfUnit1, old.resConfUnit2):
        _identity_kernels(unit.conv1, unit.conv2, scale=0.0)
    expected = F.interpolate((coarse + skip.clamp(min=0)).clamp(min=0), scale_factor=2, mode="bilinear",
                             align_corners=True)
    torch.testing.assert_close(old(coarse, skip), expected)
    with pytest.raises(TypeError, match="skip"):
        old(coarse, skip, skip)
    custom = blocks.FeatureFusionBlock_custom(8, nn.ReLU(), expand=True, align_corners=False)
    assert custom(coarse, skip).shape == (2, 4, 6, 8)
    assert custom.state_dict()["out_conv.weight"].shape == (4, 8, 1, 1)


def test_interpolate_module() -> None:
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    aligned = blocks.Interpolate(scale_factor=2, mode="bilinear", align_corners=True)(x)
    torch.testing.assert_close(aligned[0, 0, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    half_pixel = blocks.Interpolate(scale_factor=2, mode="bilinear")(x)
    torch.testing.assert_close(half_pixel[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    assert torch.equal(blocks.Interpolate(2, "nearest")(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))


# ---------------------------------------------------------------- vit helpers


def test_readout_operations() -> None:
    tokens = torch.randn(2, 1 + 6, 4)
    assert torch.equal(vit.Slice()(tokens), tokens[:, 1:])
    torch.testing.assert_close(vit.AddReadout()(tokens), tokens[:, 1:] + tokens[:, :1])
    distilled = torch.randn(2, 2 + 6, 4)
    torch.testing.assert_close(vit.AddReadout(2)(distilled), distilled[:, 2:] + distilled[:, :2].mean(1, True))
    project = vit.ProjectReadout(4)
    expected = F.gelu(project.project[0](torch.cat([tokens[:, 1:], tokens[:, :1].expand(2, 6, 4)], -1)))
    torch.testing.assert_close(project(tokens), expected)
    opers = vit.get_readout_oper(4, [96, 192, 384, 768], "project")
    assert len({id(o) for o in opers}) == 4 and all(isinstance(o, vit.ProjectReadout) for o in opers)
    assert all(isinstance(o, vit.Slice) for o in vit.get_readout_oper(4, [1, 2], "ignore"))
    with pytest.raises(ValueError, match="ignore"):
        vit.get_readout_oper(4, [1], "mean")
    assert vit.Transpose(1, 2)(tokens).shape == (2, 4, 7)


@pytest.mark.parametrize("hybrid_stem", [True, False])
def test_forward_flex_is_timm_forward_features_at_native_size_and_flexible(hybrid_stem: bool) -> None:
    model = _tiny_vit(hybrid_stem)
    x = torch.randn(2, 3, 64, 64)
    handle = model.blocks[1].register_forward_hook(vit.get_activation("probe"))
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_flex(model, x), model.forward_features(x))
        tokens = vit.forward_flex(model, torch.randn(1, 3, 64, 96))
    handle.remove()
    assert tokens.shape == (1, 1 + 4 * 6, 64) and vit.activations["probe"].shape == (1, 1 + 4 * 6, 64)


def test_forward_vit_returns_the_encoder_maps() -> None:
    encoder = ViTFeatureEncoder(_tiny_vit(False), (), (0, 1, 2, 3), (16, 32, 64, 64), readout="add").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = vit.forward_vit(encoder, x)
        assert all(torch.equal(a, b) for a, b in zip(maps, encoder(x), strict=True))
    assert [tuple(m.shape) for m in maps] == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4), (1, 64, 2, 2)]


# ---------------------------------------------------------------- transforms


@pytest.mark.parametrize(("options", "size_in", "expected"), [
    ({"keep_aspect_ratio": True, "ensure_multiple_of": 32, "resize_method": "minimal"}, (640, 480), (512, 384)),
    ({"keep_aspect_ratio": True, "ensure_multiple_of": 32, "resize_method": "minimal"}, (400, 384), (384, 384)),
    ({"keep_aspect_ratio": True, "ensure_multiple_of": 32, "resize_method": "minimal"}, (432, 384), (448, 384)),
    ({"keep_aspect_ratio": True, "ensure_multiple_of": 32, "resize_method": "lower_bound"}, (500, 300), (640, 384)),
    ({"keep_aspect_ratio": True, "ensure_multiple_of": 32, "resize_method": "upper_bound"}, (500, 300), (384, 224)),
    ({"keep_aspect_ratio": False, "ensure_multiple_of": 1}, (500, 300), (384, 384)),
])
def test_resize_get_size_follows_the_original_rules(options: dict, size_in: tuple[int, int],
                                                    expected: tuple[int, int]) -> None:
    # minimal: s = 384/480 (closer to 1 than 384/640) -> 512 x 384; 400/32 = 12.5 and 432/32 = 13.5 round to even.
    # lower_bound: s = max(384/500, 384/300) = 1.28 -> 640 x 384; upper_bound: s = 0.768 -> 384 x 230.4 -> 224.
    assert transforms.Resize(384, 384, **options).get_size(*size_in) == expected


def test_constrain_to_multiple_of_respects_the_bounds() -> None:
    resize = transforms.Resize(100, 112, ensure_multiple_of=32)
    assert resize.constrain_to_multiple_of(100) == 96  # round(3.125) = 3
    assert resize.constrain_to_multiple_of(100, min_val=100) == 128  # 96 < 100: the multiple above
    assert resize.constrain_to_multiple_of(112, max_val=112) == 96  # round(3.5) = 4 -> 128 > 112: below
    assert transforms.Resize(100, 100, ensure_multiple_of=32).get_size(100, 100) == (128, 128)  # lower bound
    with pytest.raises(ValueError, match="lower_bound"):
        transforms.Resize(1, 1, resize_method="nearest")


def test_resize_call_resizes_image_targets_and_mask() -> None:
    sample = {"image": np.full((30, 40, 3), 0.25, dtype=np.float32), "disparity": np.arange(1200.0).reshape(30, 40),
              "mask": np.ones((30, 40), dtype=bool)}
    out = transforms.Resize(20, 15, resize_method="minimal", image_interpolation_method=transforms.INTER_CUBIC)(sample)
    assert out["image"].shape == (15, 20, 3) and out["image"].dtype == np.float32
    np.testing.assert_allclose(out["image"], 0.25, atol=1e-6)
    np.testing.assert_array_equal(out["disparity"], np.arange(1200.0).reshape(30, 40)[::2, ::2])  # nearest, x2
    assert out["mask"].dtype == bool and out["mask"].all()
    kept = transforms.Resize(20, 15, resize_target=False)({"image": np.zeros((30, 40, 3)), "mask": np.ones((30, 40))})
    assert kept["mask"].shape == (30, 40)


def test_apply_min_size() -> None:
    sample = {"image": np.random.rand(30, 40, 3), "disparity": np.ones((30, 40), np.float32),
              "mask": np.ones((30, 40), bool)}
    assert transforms.apply_min_size(sample, (60, 60)) == (60, 80)  # s = max(60/30, 60/40) = 2
    assert sample["image"].shape == (60, 80, 3) and sample["disparity"].shape == sample["mask"].shape == (60, 80)
    assert sample["mask"].dtype == bool
    assert transforms.apply_min_size(sample, (75, 10)) == (75, 100)  # s = max(75/60, 10/80) = 1.25
    assert transforms.apply_min_size(sample, (75, 100)) is sample  # large enough: unchanged
    assert transforms.apply_min_size(sample, (76, 10)) == (76, 102)  # s = 76/75: 100 · 76/75 = 101.3 -> 102


def test_area_resampling_weights() -> None:
    torch.testing.assert_close(transforms.area_weights(3, 2), torch.tensor([[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]],
                                                                           dtype=torch.float64))
    grow = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float64)
    torch.testing.assert_close(transforms.area_weights(2, 4, average=False), grow)
    torch.testing.assert_close(transforms.area_weights(5, 12, average=False), transforms.area_weights(5, 12))
    image = np.arange(24.0).reshape(4, 6)
    shrunk = transforms.resize_array(image, (3, 2), transforms.INTER_AREA)  # 2x2 block means
    np.testing.assert_allclose(shrunk, image.reshape(2, 2, 3, 2).mean(axis=(1, 3)))


def test_nearest_uses_opencv_index_arithmetic() -> None:
    # Output pixel 24 of 96 from 400: 24 · 400/96 = 100 exactly; float32 arithmetic gives 99.99999.
    assert int(transforms.nearest_indices(400, 96)[24]) == 100
    assert transforms.nearest_indices(5, 2).tolist() == [0, 2]
    with pytest.raises(ValueError, match="INTER_AREA"):
        transforms.resize_array(np.zeros((4, 4)), (2, 2), 4)


def test_integer_images_keep_their_type() -> None:
    image = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    out = transforms.resize_array(image, (1, 1), transforms.INTER_AREA)
    assert out.dtype == np.uint8 and out.tolist() == [[128]]  # 127.5 -> 128


def test_normalize_and_prepare_for_net() -> None:
    sample = {"image": np.ones((4, 5, 3)) * [0.5, 0.25, 1.0], "mask": np.ones((4, 5), bool),
              "depth": np.ones((4, 5))}
    sample = transforms.NormalizeImage(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])(sample)
    sample = transforms.PrepareForNet()(sample)
    assert sample["image"].shape == (3, 4, 5) and sample["image"].dtype == np.float32
    assert sample["image"].flags.c_contiguous
    np.testing.assert_allclose(sample["image"][:, 0, 0], [0.0, -0.5, 1.0])
    assert sample["mask"].dtype == sample["depth"].dtype == np.float32
