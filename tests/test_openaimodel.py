"""ldm.modules.diffusionmodules.openaimodel / unet_blocks: reference outputs of the original UNet, full-size key
manifests, SDPA self-attention against the einsum formula, gradient checkpointing, block invariants and the
argument errors (one table)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import (
    AttentionBlock,
    Downsample,
    QKVAttention,
    QKVAttentionLegacy,
    ResBlock,
    TimestepBlock,
    TimestepEmbedSequential,
    UNetModel,
    Upsample,
    _heads_and_dim_head,
)
from ldm.util import instantiate_from_config
from tests.helpers import REFDATA, RecordShapes, load_manifest, state_dict_manifest

SD_V1_UNET = dict(  # unet_config of CompVis/stable-diffusion configs/stable-diffusion/v1-inference.yaml
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True, transformer_depth=1,
    context_dim=768, use_checkpoint=True, legacy=False,
)
CIN256_V2_UNET = dict(  # unet_config of CompVis/latent-diffusion configs/latent-diffusion/cin256-v2.yaml
    image_size=64, in_channels=3, out_channels=3, model_channels=192, attention_resolutions=[8, 4, 2],
    num_res_blocks=2, channel_mult=[1, 2, 3, 5], num_heads=1, use_spatial_transformer=True, transformer_depth=1,
    context_dim=512, use_checkpoint=True,
)


def build_tiny(config: str) -> UNetModel:
    return instantiate_from_config(OmegaConf.load(REFDATA / "configs" / config).model)


def load_vectors(name: str) -> dict:
    data = torch.load(REFDATA / "vectors" / name, weights_only=True)
    return data["unet"] if name == "ldm_tiny.pt" else data


@pytest.fixture(scope="module")
def sd_tiny() -> tuple[UNetModel, dict]:
    data = load_vectors("ldm_tiny.pt")
    model = build_tiny("unet_sdv1_tiny.yaml").eval()
    model.load_state_dict(data["state_dict"], strict=True)
    return model, data


@pytest.fixture(scope="module")
def cls_tiny() -> tuple[UNetModel, dict]:
    data = load_vectors("unet_cls_tiny.pt")
    model = build_tiny("unet_cls_tiny.yaml").eval()
    model.load_state_dict(data["state_dict"], strict=True)
    return model, data


# --------------------------------------------------------------------------------------------------------
# Reference outputs and key manifests
# --------------------------------------------------------------------------------------------------------


def test_sd_tiny_matches_original(sd_tiny):
    model, data = sd_tiny
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp16-stored weights cast on load
    inputs = data["inputs"]
    with torch.no_grad():
        eps = model(inputs["x"], inputs["timesteps"], context=inputs["context"])
    torch.testing.assert_close(eps, data["outputs"]["eps"], rtol=1e-4, atol=1e-4)


def test_class_conditional_tiny_matches_original(cls_tiny):
    model, data = cls_tiny
    inputs = data["inputs"]
    with torch.no_grad():
        out = model(inputs["x"], inputs["timesteps"], y=inputs["y"])
    torch.testing.assert_close(out, data["outputs"]["out"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("params", "manifest"),
    [(SD_V1_UNET, "sd-v1.unet.tsv"), (CIN256_V2_UNET, "ldm-cin256-v2.tsv")],
    ids=["sd-v1", "cin256-v2"],
)
def test_full_size_unet_keys_shapes_dtypes(params, manifest):
    prefix = "model.diffusion_model."
    expected = {k.removeprefix(prefix): v for k, v in load_manifest(manifest).items() if k.startswith(prefix)}
    with torch.device("meta"):
        model = UNetModel(**params)
    assert state_dict_manifest(model) == expected


def test_full_size_head_counts():
    with torch.device("meta"):
        sd, cin = UNetModel(**SD_V1_UNET), UNetModel(**CIN256_V2_UNET)
    sd_attn = [m for m in sd.modules() if isinstance(m, SpatialTransformer)]
    assert len(sd_attn) == 16
    assert {(b.attn2.heads, b.attn2.to_q.out_features) for m in sd_attn for b in m.transformer_blocks} == {
        (8, 320), (8, 640), (8, 1280)
    }
    cin_attn = [b.attn1 for m in cin.modules() if isinstance(m, SpatialTransformer) for b in m.transformer_blocks]
    assert {a.heads for a in cin_attn} == {1}
    assert {round(a.scale**-2) for a in cin_attn} == {384, 576, 960}  # one head as wide as the layer


def test_head_count_rule():
    # non-legacy: dim_head = ch // num_heads, or num_head_channels with ch // num_head_channels heads
    assert _heads_and_dim_head(320, 8, -1, True, False) == (8, 40)
    assert _heads_and_dim_head(320, 8, 64, True, False) == (5, 64)
    assert _heads_and_dim_head(32, 7, -1, False, False) == (7, 4)
    # legacy: SpatialTransformer ch // num_heads, AttentionBlock gets num_head_channels unchanged (-1: use num_heads)
    assert _heads_and_dim_head(320, 8, 64, True, True) == (5, 64)
    assert _heads_and_dim_head(32, 7, -1, False, True) == (7, -1)
    assert _heads_and_dim_head(64, 4, 8, False, True) == (8, 8)


def test_legacy_decides_decoder_attention_heads():
    kwargs = dict(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                  attention_resolutions=[1], channel_mult=[1], num_heads=2, num_heads_upsample=4)
    legacy, new = UNetModel(**kwargs, legacy=True), UNetModel(**kwargs, legacy=False)
    assert legacy.middle_block[1].num_heads == new.middle_block[1].num_heads == 2
    assert legacy.output_blocks[0][1].num_heads == 4  # legacy: num_heads_upsample
    assert new.output_blocks[0][1].num_heads == 2  # non-legacy: num_head_channels = ch // num_heads wins


# --------------------------------------------------------------------------------------------------------
# Self-attention
# --------------------------------------------------------------------------------------------------------


def reference_qkv_attention(qkv: torch.Tensor, n_heads: int, new_order: bool) -> torch.Tensor:
    """``softmax(QᵀK / √C) Vᵀ`` per head, by explicit matmuls: ``(B, 3·H·C, T) -> (B, H·C, T)``; the packing is
    ``(3, H, C)`` (new order) or ``(H, 3, C)`` (legacy) along the channel axis."""
    layout = (3, n_heads, -1) if new_order else (n_heads, 3, -1)
    packed = qkv.unflatten(1, layout)  # (B, 3, H, C, T) or (B, H, 3, C, T)
    parts = packed.unbind(1 if new_order else 2)  # q, k, v: (B, H, C, T) each
    q, k, v = (p.transpose(-1, -2) for p in parts)  # (B, H, T, C)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, H, T, T)
    return (probs @ v).transpose(-1, -2).flatten(1, 2)  # (B, H·C, T)


@pytest.mark.parametrize("new_order", [False, True], ids=["legacy", "new-order"])
def test_packed_qkv_attention_equals_the_einsum_formula(new_order):
    torch.manual_seed(0)
    qkv = torch.randn(2, 3 * 4 * 16, 35)  # 4 heads of 16 channels, 35 positions
    layer = (QKVAttention if new_order else QKVAttentionLegacy)(4)
    torch.testing.assert_close(layer(qkv), reference_qkv_attention(qkv, 4, new_order), rtol=1e-5, atol=1e-5)


def test_attention_block_heads_and_fresh_identity():
    torch.manual_seed(0)
    block = AttentionBlock(64, num_head_channels=16).eval()
    assert block.num_heads == block.attention.n_heads == 4
    x = torch.randn(2, 64, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)  # proj_out starts at zero
        nn.init.normal_(block.proj_out.weight, std=0.1)
        assert not torch.allclose(block(x), x)


@pytest.mark.parametrize("new_order", [False, True], ids=["legacy", "new-order"])
def test_attention_block_builds_no_token_by_token_tensor(new_order):
    block = AttentionBlock(32, num_heads=2, use_new_attention_order=new_order)
    x = torch.randn(2, 32, 5, 7, requires_grad=True)
    with RecordShapes() as rec:
        block(x).sum().backward()
    assert any("scaled_dot_product" in name for name, _ in rec.ops)
    assert rec.square_tensors(35, 35) == []


def test_unet_builds_no_token_by_token_tensor(sd_tiny):
    model, data = sd_tiny
    inputs = data["inputs"]
    with RecordShapes() as rec, torch.no_grad():
        model(inputs["x"], inputs["timesteps"], context=inputs["context"])
    batch_heads = 2 * 8  # one (tokens × tokens) matrix per sample and head would be ≥ this many
    assert rec.square_tensors(256, 256, batch_heads) == [] and rec.square_tensors(256, 7, batch_heads) == []


# --------------------------------------------------------------------------------------------------------
# Gradient checkpointing
# --------------------------------------------------------------------------------------------------------


def test_checkpointing_same_output_and_grads_and_recomputes(cls_tiny):
    reference, data = cls_tiny
    params = OmegaConf.to_container(OmegaConf.load(REFDATA / "configs" / "unet_cls_tiny.yaml").model.params)
    models = {}
    for flag in (True, False):
        models[flag] = UNetModel(**{**params, "use_checkpoint": flag})
        models[flag].load_state_dict(reference.state_dict())
    inputs = data["inputs"]
    calls = []
    models[True].input_blocks[1][0].in_layers.register_forward_hook(lambda *_: calls.append(1))
    models[True].middle_block[1].qkv.register_forward_hook(lambda *_: calls.append(2))

    outs = {}
    for flag, model in models.items():
        outs[flag] = model(inputs["x"], inputs["timesteps"], y=inputs["y"])
        if flag:
            assert calls == [1, 2]
        outs[flag].square().mean().backward()
    assert calls == [1, 2, 2, 1]  # both blocks ran again during backward (in reverse order)

    torch.testing.assert_close(outs[True], outs[False], rtol=0, atol=1e-6)
    grads = {flag: dict((n, p.grad) for n, p in model.named_parameters()) for flag, model in models.items()}
    assert all(g is not None for g in grads[True].values())
    for name, grad in grads[True].items():
        torch.testing.assert_close(grad, grads[False][name], rtol=0, atol=1e-6, msg=name)


def test_transformer_blocks_checkpoint_as_the_original_unless_switched_off(sd_tiny):
    reference, data = sd_tiny
    params = OmegaConf.to_container(OmegaConf.load(REFDATA / "configs" / "unet_sdv1_tiny.yaml").model.params)
    params["use_checkpoint"] = False  # the original checkpoints its transformer blocks whatever this says
    inputs = data["inputs"]
    grads, runs = {}, {}
    for flag in (True, False):
        model = UNetModel(**{**params, "checkpoint_transformers": flag})
        model.load_state_dict(reference.state_dict())
        blocks = [m for m in model.modules() if isinstance(m, SpatialTransformer)]
        assert blocks and all(b.transformer_blocks[0].checkpoint is flag for b in blocks)
        runs[flag] = []
        blocks[0].transformer_blocks[0].attn1.register_forward_hook(lambda *_, f=flag: runs[f].append(1))
        model(inputs["x"], inputs["timesteps"], context=inputs["context"]).square().mean().backward()
        grads[flag] = {n: p.grad for n, p in model.named_parameters()}
    assert len(runs[True]) == 2 and len(runs[False]) == 1  # recomputed in backward only when checkpointing
    for name, grad in grads[True].items():
        torch.testing.assert_close(grad, grads[False][name], rtol=0, atol=1e-6, msg=name)
    default = UNetModel(**params)
    assert all(m.checkpoint for m in default.modules() if type(m).__name__ == "BasicTransformerBlock")


def test_no_checkpoint_without_grad(cls_tiny):
    _, data = cls_tiny
    params = OmegaConf.to_container(OmegaConf.load(REFDATA / "configs" / "unet_cls_tiny.yaml").model.params)
    model = UNetModel(**{**params, "use_checkpoint": True})
    calls = []
    model.input_blocks[1][0].in_layers.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(data["inputs"]["x"], data["inputs"]["timesteps"], y=data["inputs"]["y"])
    assert calls == [1]


# --------------------------------------------------------------------------------------------------------
# UNet options and argument errors
# --------------------------------------------------------------------------------------------------------


def test_label_embedding_adds_to_time_embedding(cls_tiny):
    model, _ = cls_tiny
    assert model.label_emb.weight.shape == (10, 4 * 32)
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([5])
    with torch.no_grad():
        outs = [model(x, t, y=torch.tensor([c])) for c in (0, 1)]
    assert not torch.allclose(outs[0], outs[1])


def test_codebook_predictor_head():
    torch.manual_seed(0)
    model = UNetModel(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                      attention_resolutions=[2], channel_mult=[1, 2], num_heads=2, n_embed=17).eval()
    assert model.id_predictor[1].weight.shape == (17, 32, 1, 1)
    assert model.out[2].weight.shape == (3, 32, 3, 3)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 7])
    captured = []
    model.id_predictor.register_forward_hook(lambda _m, inp, _o: captured.append(inp[0]))
    with torch.no_grad():
        logits = model(x, t)
    assert logits.shape == (2, 17, 8, 8)
    torch.testing.assert_close(logits, model.id_predictor(captured[0]))


def test_fp16_torso_close_to_fp32(cls_tiny):
    reference, data = cls_tiny
    params = OmegaConf.to_container(OmegaConf.load(REFDATA / "configs" / "unet_cls_tiny.yaml").model.params)
    model = UNetModel(**params, use_fp16=True).eval()
    model.load_state_dict(reference.state_dict())
    assert model.dtype == torch.float16 and {p.dtype for p in model.parameters()} == {torch.float32}
    model.convert_to_fp16()  # use_fp16 alone keeps float32 weights (the checkpoints' dtype)
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    assert model.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32  # group norms stay fp32
    assert model.time_embed[0].weight.dtype == model.out[2].weight.dtype == torch.float32
    inputs = data["inputs"]
    with torch.no_grad():
        out = model(inputs["x"], inputs["timesteps"], y=inputs["y"])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, data["outputs"]["out"], rtol=0, atol=2e-2)
    model.convert_to_fp32()  # the reference weights are fp16-representable: the round trip is exact
    assert model.dtype == torch.float32 and {p.dtype for p in model.parameters()} == {torch.float32}
    with torch.no_grad():
        out = model(inputs["x"], inputs["timesteps"], y=inputs["y"])
    torch.testing.assert_close(out, data["outputs"]["out"], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------


def test_timestep_embed_sequential_routes_arguments():
    seen = []

    class NeedsEmb(TimestepBlock):
        def forward(self, x, emb):
            seen.append(("emb", emb))
            return x + 1

    class Plain(nn.Module):
        def forward(self, x):
            seen.append(("plain", None))
            return x * 2

    transformer = SpatialTransformer(32, n_heads=1, d_head=8, context_dim=4)
    transformer.register_forward_hook(lambda _m, args, _o: seen.append(("context", args[1])))
    seq = TimestepEmbedSequential(NeedsEmb(), Plain(), transformer)
    x, emb, context = torch.zeros(1, 32, 2, 2), torch.ones(1, 8), torch.randn(1, 3, 4)
    out = seq(x, emb, context)
    assert [kind for kind, _ in seen] == ["emb", "plain", "context"]
    assert seen[0][1] is emb and seen[2][1] is context
    torch.testing.assert_close(out, torch.full_like(x, 2.0))  # zero-init proj_out: transformer is identity



def test_upsample_downsample_closed_forms():
    x = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(Upsample(4, False)(x), x.repeat_interleave(2, -1).repeat_interleave(2, -2))
    y = torch.randn(2, 4, 6, 8)
    torch.testing.assert_close(Downsample(4, False)(y), y.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)))
    assert Upsample(4, True, out_channels=6)(x).shape == (2, 6, 6, 10)
    assert Downsample(4, True, out_channels=6)(y).shape == (2, 6, 3, 4)
    video = torch.randn(1, 4, 3, 4, 4)  # dims=3 resamples the inner two dims only
    doubled = video.repeat_interleave(2, -1).repeat_interleave(2, -2)
    torch.testing.assert_close(Upsample(4, False, dims=3)(video), doubled)
    assert Downsample(4, True, dims=3)(video).shape == (1, 4, 3, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(), lambda b, x: x),
        (dict(out_channels=64), lambda b, x: nn.functional.conv2d(x, b.skip_connection.weight, b.skip_connection.bias)),
        (dict(out_channels=64, use_conv=True),
         lambda b, x: nn.functional.conv2d(x, b.skip_connection.weight, b.skip_connection.bias, padding=1)),
        (dict(up=True), lambda b, x: x.repeat_interleave(2, -1).repeat_interleave(2, -2)),
        (dict(down=True), lambda b, x: nn.functional.avg_pool2d(x, 2)),
        (dict(use_scale_shift_norm=True, down=True), lambda b, x: nn.functional.avg_pool2d(x, 2)),
    ],
    ids=["identity", "1x1", "3x3", "up", "down", "film-down"],
)
def test_fresh_resblock_is_its_skip_path(kwargs, expected):
    # out_layers ends in a zero-initialised conv, so a new block adds nothing to its skip path
    torch.manual_seed(0)
    block = ResBlock(32, 16, 0.0, **kwargs).eval()
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(block(x, emb), expected(block, x))


def _randomise_(block: ResBlock) -> ResBlock:
    with torch.no_grad():
        for norm in (block.in_layers[0], block.out_layers[0]):
            norm.weight.normal_(1.0, 0.2), norm.bias.normal_(0.0, 0.2)
        block.out_layers[3].weight.normal_(0.0, 0.05)
    return block


def test_scale_shift_embedding_equals_a_rescaled_norm():
    # norm(h)·(1 + s) + t == GroupNorm with weight γ(1 + s) and bias β(1 + s) + t: a FiLM block whose embedding
    # gives (s, t) matches an additive block with that norm and a zero embedding
    torch.manual_seed(0)
    film = _randomise_(ResBlock(32, 16, 0.0, out_channels=64, use_scale_shift_norm=True)).eval()
    plain = ResBlock(32, 16, 0.0, out_channels=64).eval()
    plain.load_state_dict({k: v for k, v in film.state_dict().items() if not k.startswith("emb_layers")}, strict=False)
    scale, shift = torch.randn(64), torch.randn(64)
    with torch.no_grad():
        film.emb_layers[1].weight.zero_()
        film.emb_layers[1].bias.copy_(torch.cat([scale, shift]))
        nn.init.zeros_(plain.emb_layers[1].weight), nn.init.zeros_(plain.emb_layers[1].bias)
        gamma, beta = film.out_layers[0].weight, film.out_layers[0].bias
        plain.out_layers[0].weight.copy_(gamma * (1 + scale))
        plain.out_layers[0].bias.copy_(beta * (1 + scale) + shift)
        x, emb = torch.randn(2, 32, 5, 5), torch.randn(2, 16)
        torch.testing.assert_close(film(x, emb), plain(x, emb), rtol=1e-5, atol=1e-5)


def test_additive_embedding_constant_per_norm_group_cancels():
    # out_layers starts with GroupNorm(32): a bias constant over each group of channels is removed by it
    torch.manual_seed(0)
    block = _randomise_(ResBlock(32, 16, 0.0, out_channels=64)).eval()
    x, emb = torch.randn(2, 32, 5, 5), torch.randn(2, 16)
    outputs = {}
    with torch.no_grad():
        block.emb_layers[1].weight.zero_()
        for name, bias in [("zero", torch.zeros(64)), ("per-group", torch.randn(32).repeat_interleave(2)),
                           ("per-channel", torch.randn(64))]:
            block.emb_layers[1].bias.copy_(bias)
            outputs[name] = block(x, emb)
    torch.testing.assert_close(outputs["per-group"], outputs["zero"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outputs["per-channel"], outputs["zero"], atol=1e-3)


def test_resblock_checkpointing_recomputes_with_equal_grads():
    torch.manual_seed(0)
    blocks = {flag: _randomise_(ResBlock(32, 16, 0.0, out_channels=64, use_checkpoint=flag)) for flag in (True, False)}
    blocks[False].load_state_dict(blocks[True].state_dict())
    runs = []
    blocks[True].in_layers.register_forward_hook(lambda *_: runs.append(1))
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    for block in blocks.values():
        block(x, emb).square().sum().backward()
    assert len(runs) == 2
    for (name, a), b in zip(blocks[True].named_parameters(), blocks[False].parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


# --------------------------------------------------------------------------------------------------------
# Argument errors
# --------------------------------------------------------------------------------------------------------

TINY = dict(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
            attention_resolutions=[], channel_mult=[1])
X, T = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])


def _unet(**kwargs) -> UNetModel:
    return UNetModel(**{**TINY, "num_heads": 2, **kwargs})


# (id, call, message, the original asserts there: the error is also an AssertionError)
ERRORS = [
    ("no-context-dim", lambda: _unet(use_spatial_transformer=True), "use_spatial_transformer needs context_dim", True),
    ("context-without-transformer", lambda: _unet(context_dim=8), "use_spatial_transformer is False", True),
    ("no-heads", lambda: _unet(num_heads=-1), "set num_heads or num_head_channels", True),
    ("head-width", lambda: _unet(num_head_channels=12, attention_resolutions=[1]),
     "heads of 12 channels do not tile a 32-channel layer", True),
    ("no-timesteps", lambda: _unet()(X), "needs timesteps", False),
    ("missing-labels", lambda: _unet(num_classes=10)(X, T), "num_classes=10 but got y=None", True),
    ("unexpected-labels", lambda: _unet()(X, T, y=T), "num_classes=None but got y=a tensor", True),
    ("label-shape", lambda: _unet(num_classes=10)(X, T, y=torch.tensor([1, 2, 3])), r"y must have shape \(2,\)", True),
    ("pool-changes-width", lambda: Downsample(4, False, out_channels=6), "needs use_conv=True", True),
    ("upsample-width", lambda: Upsample(4, False)(torch.randn(1, 3, 2, 2)), "Upsample expects 4 input channels", True),
    ("downsample-width", lambda: Downsample(4, True)(torch.randn(1, 3, 2, 2)), "Downsample expects 4 input channels",
     True),
]


@pytest.mark.parametrize(("make", "message", "asserts"), [row[1:] for row in ERRORS], ids=[row[0] for row in ERRORS])
def test_errors_name_the_problem(make, message, asserts):
    with pytest.raises(ValueError, match=message) as caught:
        make()
    assert isinstance(caught.value, AssertionError) is asserts
