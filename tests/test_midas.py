"""MiDaS DPT depth stage (``ldm.modules.midas``) of the SD 2.x depth-to-image model.

The full-size networks are built on the meta device for the key checks; the forward checks give the real
dpt_hybrid network deterministic weights (``_deterministic_weights``) instead of timm's slow random init.
``HYBRID_64_POOLED`` was produced by the original code (Stability-AI/stablediffusion cf1d67a6,
``ldm/modules/midas/midas/dpt_depth.py`` ``DPTDepthModel(backbone="vitb_rn50_384", non_negative=True)``,
timm 1.0.31, torch 2.x CPU fp32) with the same weights and input: ``avg_pool2d(depth, 8)`` of the 64x64 output.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from timm.layers import StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_hybrid import HybridEmbed

from ldm.modules.midas.api import MiDaSInference
from ldm.modules.midas.backbone import ViTFeatureEncoder, resize_pos_embed
from ldm.modules.midas.dpt import FusionDecoder
from ldm.modules.midas.fusion import FeatureFusionBlock, ResidualConvUnit
from ldm.modules.midas.transforms import midas_input_size, prepare_midas_input
from ldm.util import instantiate_from_config
from tests.helpers import REFDATA, state_dict_manifest

MANIFEST = REFDATA / "sd2" / "manifests" / "sd-v2-midas-inference.tsv"
PREFIX = "depth_model."

HYBRID_64_POOLED = [
    [0.002857, 0.597778, 1.313402, 1.278704, 1.183793, 0.591215, 0.238062, 1.647678],
    [0.000000, 0.344125, 0.980216, 0.932436, 0.270045, 0.523146, 0.950797, 1.343633],
    [0.000000, 0.026542, 0.389434, 0.096683, 0.205102, 1.462394, 0.887115, 0.997002],
    [0.001209, 0.000000, 0.000000, 0.000000, 0.100227, 1.001490, 0.117291, 0.109693],
    [0.000000, 0.000000, 0.000000, 0.000000, 0.009294, 0.676928, 0.196530, 0.345491],
    [0.000000, 0.000000, 0.000000, 0.000000, 0.164507, 0.111744, 0.000000, 0.071205],
    [0.000000, 0.000000, 0.000000, 0.000000, 0.000000, 0.000000, 0.005458, 0.223744],
    [0.000000, 0.000000, 0.000000, 0.000000, 0.000000, 0.000000, 0.000000, 0.330147],
]


def _manifest_rows() -> dict[str, tuple[tuple[int, ...], str]]:
    rows = {}
    for line in MANIFEST.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        if key.startswith(PREFIX):
            rows[key.removeprefix(PREFIX)] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return rows


def _deterministic_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """Fill every state-dict tensor, in sorted key order, from one seeded generator (scaled by fan-in)."""
    gen = torch.Generator().manual_seed(seed)
    state = module.state_dict()
    filled = {}
    for name in sorted(state):
        noise = torch.randn(state[name].shape, generator=gen)
        if name.endswith(("pos_embed", "cls_token")):
            filled[name] = 0.5 * noise
        elif noise.dim() >= 2:
            filled[name] = noise / state[name][0].numel() ** 0.5
        elif name.endswith("weight"):
            filled[name] = 1 + 0.1 * noise
        else:
            filled[name] = 0.1 * noise
    module.load_state_dict(filled, strict=True)


@pytest.fixture(scope="module")
def hybrid() -> MiDaSInference:
    with torch.device("meta"):
        model = MiDaSInference("dpt_hybrid")
    model = model.to_empty(device="cpu")
    _deterministic_weights(model.model)
    return model


# ---------------------------------------------------------------- architecture / checkpoint layout


def test_dpt_hybrid_keys_and_shapes_equal_the_manifest() -> None:
    with torch.device("meta"):
        model = instantiate_from_config(
            {"target": "ldm.modules.midas.api.MiDaSInference", "params": {"model_type": "dpt_hybrid"}})
    expected = _manifest_rows()
    assert len(expected) == 368
    assert state_dict_manifest(model) == expected


def test_dpt_large_builds_with_the_vit_large_layout() -> None:
    with torch.device("meta"):
        model = MiDaSInference("dpt_large")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 368
    assert shapes["model.pretrained.model.pos_embed"] == (1, 577, 1024)
    assert shapes["model.pretrained.act_postprocess1.4.weight"] == (256, 256, 4, 4)  # transposed conv, x4
    assert shapes["model.pretrained.act_postprocess2.4.weight"] == (512, 512, 2, 2)  # transposed conv, x2
    assert "model.pretrained.act_postprocess3.4.weight" not in shapes
    assert shapes["model.pretrained.act_postprocess4.4.weight"] == (1024, 1024, 3, 3)  # strided conv, /2
    assert shapes["model.scratch.layer4_rn.weight"] == (256, 1024, 3, 3)
    assert sum(k.endswith("attn.qkv.weight") for k in shapes) == 24


@pytest.mark.parametrize("model_type", ["DPT_Hybrid", "midas_v3"])
def test_unknown_model_types_raise_naming_the_supported_ones(model_type: str) -> None:
    with pytest.raises(ValueError, match="dpt_hybrid"):
        MiDaSInference(model_type)


@pytest.mark.parametrize(("model_type", "network"), [("midas_v21", "MidasNet"), ("midas_v21_small", "MidasNet_small")])
def test_the_v21_releases_build_offline(model_type: str, network: str) -> None:
    with torch.device("meta"):
        model = MiDaSInference(model_type)
    assert type(model.model).__name__ == network and not model.training


def test_stays_frozen_in_eval_mode() -> None:
    with torch.device("meta"):
        model = MiDaSInference("dpt_hybrid")
    model.train()
    assert not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------- forward


def test_hybrid_forward_matches_the_original_numbers(hybrid: MiDaSInference) -> None:
    pinned = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(1)) * 2 - 1
    other = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(2)) * 2 - 1
    depth = hybrid(torch.cat([pinned, other]))  # batched with another image: samples must not mix
    assert depth.shape == (2, 1, 64, 64) and not depth.requires_grad
    assert depth.min() >= 0
    pooled = F.avg_pool2d(depth[:1], 8)[0, 0]
    torch.testing.assert_close(pooled, torch.tensor(HYBRID_64_POOLED), atol=1e-4, rtol=1e-4)


def test_sizes_not_multiple_of_32_are_refused(hybrid: MiDaSInference) -> None:
    with pytest.raises(ValueError, match="divisible by 32"):
        hybrid(torch.zeros(1, 3, 48, 64))


# ---------------------------------------------------------------- parts, against closed forms / timm itself


def _tiny_vit(hybrid_stem: bool) -> VisionTransformer:
    torch.manual_seed(0)
    if hybrid_stem:
        resnet = ResNetV2(layers=(1, 1, 1), channels=(128, 256, 512), stem_chs=32, num_classes=0, global_pool="",
                          preact=False, stem_type="same", conv_layer=partial(StdConv2dSame, eps=1e-8))
        return VisionTransformer(img_size=64, patch_size=1, embed_layer=partial(HybridEmbed, backbone=resnet),
                                 embed_dim=64, depth=3, num_heads=2, num_classes=0).eval()
    return VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=2, num_classes=0).eval()


@pytest.mark.parametrize("hybrid_stem", [True, False])
def test_encoder_tokens_equal_timm_forward_features_at_native_size(hybrid_stem: bool) -> None:
    vit = _tiny_vit(hybrid_stem)
    stage_taps, block_taps = ((0, 1), (1, 2)) if hybrid_stem else ((), (0, 1, 2, 3))
    encoder = ViTFeatureEncoder(vit, stage_taps, block_taps, (16, 32, 64, 64)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stage_maps, tokens = encoder.tap(x)
        torch.testing.assert_close(vit.norm(tokens[-1]), vit.forward_features(x))
        maps = encoder(x)
    fine = [(2, 128, 16, 16), (2, 256, 8, 8)] if hybrid_stem else [(2, 16, 16, 16), (2, 32, 8, 8)]
    assert [tuple(m.shape) for m in stage_maps] == (fine if hybrid_stem else [])
    assert [tuple(m.shape) for m in maps] == [*fine, (2, 64, 4, 4), (2, 64, 2, 2)]


def test_tiny_dpt_on_a_non_square_image_gives_a_nonnegative_map_of_its_size() -> None:
    encoder = ViTFeatureEncoder(_tiny_vit(True), (0, 1), (1, 2), (128, 256, 64, 64)).eval()
    decoder = FusionDecoder((128, 256, 64, 64), features=32).eval()
    _deterministic_weights(decoder)
    with torch.no_grad():
        maps = encoder(torch.randn(2, 3, 64, 96))  # 4x6 token grid from a 4x4 position table
        depth = decoder(maps)
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert depth.shape == (2, 1, 64, 96)
    assert depth.min() >= 0 and depth.max() > 0


def test_pos_embed_resize_is_bilinear_with_half_pixel_centres() -> None:
    side = 24
    rows, cols = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                                indexing="ij")
    table = torch.stack([rows, cols], dim=-1).reshape(1, side * side, 2)  # channel 0 = row, 1 = col
    cls = torch.tensor([[[7.0, -7.0]]], dtype=torch.float64)
    pos = torch.cat([cls, table], dim=1)
    out = resize_pos_embed(pos, (4, 3))
    assert out.shape == (1, 1 + 12, 2)
    assert torch.equal(out[:, :1], cls)
    # Output cell i of n samples source coordinate (i + 1/2) * side / n - 1/2; the grid is linear, so exact.
    src_rows = (torch.arange(4, dtype=torch.float64) + 0.5) * side / 4 - 0.5
    src_cols = (torch.arange(3, dtype=torch.float64) + 0.5) * side / 3 - 0.5
    grid = out[0, 1:].reshape(4, 3, 2)
    torch.testing.assert_close(grid[..., 0], src_rows[:, None].expand(4, 3))
    torch.testing.assert_close(grid[..., 1], src_cols[None, :].expand(4, 3))
    assert resize_pos_embed(pos, (side, side)) is pos


def test_residual_conv_unit_is_pre_activation() -> None:
    unit = ResidualConvUnit(1)
    with torch.no_grad():
        for conv in (unit.conv1, unit.conv2):
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0  # identity kernel
            conv.bias.zero_()
    z = torch.randn(1, 1, 5, 5)
    torch.testing.assert_close(unit(z), z + z.clamp(min=0))  # z + relu(relu(z))


def test_fusion_block_with_identity_units_upsamples_the_sum_with_aligned_corners() -> None:
    block = FeatureFusionBlock(2)
    with torch.no_grad():
        for param in block.parameters():
            param.zero_()
        block.out_conv.weight[:, :, 0, 0] = torch.eye(2)
    i, j = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    coarse = torch.stack([2 * i - j, i + 0.5 * j])[None]  # (1, 2, 3, 4), linear in (i, j)
    skip = torch.stack([i, -j])[None]
    out = block(coarse, skip)
    assert out.shape == (1, 2, 6, 8)
    # Aligned corners map output (p, q) to input (p·2/5, q·3/7); a linear field is reproduced exactly.
    p, q = torch.meshgrid(torch.arange(6.0) * 2 / 5, torch.arange(8.0) * 3 / 7, indexing="ij")
    expected = torch.stack([3 * p - q, p - 0.5 * q])[None]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(block(coarse), F.interpolate(coarse, scale_factor=2, mode="bilinear",
                                                            align_corners=True))


@pytest.mark.slow
def test_full_size_random_build_runs_at_384() -> None:
    model = MiDaSInference("dpt_hybrid")
    depth = model(torch.rand(1, 3, 384, 384) * 2 - 1)
    assert depth.shape == (1, 1, 384, 384)
    assert torch.isfinite(depth).all() and depth.min() >= 0


# ---------------------------------------------------------------- input transform


@pytest.mark.parametrize(("hw", "expected"), [
    ((512, 512), (384, 384)),  # scale 0.75
    ((512, 768), (384, 576)),  # 384/512 is closer to 1 than 384/768: fit the height
    ((768, 512), (576, 384)),
    ((480, 640), (384, 512)),
    ((384, 400), (384, 384)),  # 400 / 32 = 12.5 rounds to the even 12
    ((384, 432), (384, 448)),  # 13.5 rounds to the even 14
    ((300, 200), (384, 256)),  # 384/300 (1.28) is closer to 1 than 384/200 (1.92): upscale
])
def test_midas_input_size_follows_the_minimal_keep_aspect_rule(hw: tuple[int, int],
                                                               expected: tuple[int, int]) -> None:
    assert midas_input_size(*hw) == expected


def test_prepare_midas_input_resizes_and_keeps_constant_images() -> None:
    image = torch.full((2, 3, 512, 768), -0.25)
    out = prepare_midas_input(image)
    assert out.shape == (2, 3, 384, 576)
    torch.testing.assert_close(out, torch.full_like(out, -0.25))  # bicubic weights sum to one
    ready = torch.rand(1, 3, 384, 384)
    assert prepare_midas_input(ready) is ready
