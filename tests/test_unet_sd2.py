"""The SD 2.x options of UNetModel / SpatialTransformer / BasicTransformerBlock: the original's outputs on the
``refdata/sd2`` UNet cases (recipe weights, strict load), the full-size key/shape manifests of the SD 2.x configs,
what the original could not do (transformer_depth > 1 with one context_dim, use_fp16 on a float32 CPU forward),
the linear projections against their conv form, the fast paths on a linear-projection UNet, and the errors."""

from __future__ import annotations

import copy
import functools
import inspect

import pytest
import torch
from omegaconf import OmegaConf

from ldm.modules.attention import BasicTransformerBlock, CrossAttention, SpatialTransformer
from ldm.modules.attention_slicing import set_attention_slicing
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.diffusionmodules.util import timestep_embedding
from ldm.modules.fast.blocks import swap_fast_blocks
from ldm.modules.fast.packed_conv import onednn_packing_available, pack_convolutions
from ldm.util import SettingError, instantiate_from_config
from tests.helpers import REFDATA, load_manifest, state_dict_manifest
from tests.sd2_refmodels import SD2, build_config, load_recipe, load_vectors, recipe_state_dict

CASES = [name for name in load_vectors("unet.pt") if name != "quirks"]
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _case(name: str) -> dict:
    return load_vectors("unet.pt")[name]


def _params(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(SD2 / "configs" / f"{name}.yaml").model.params)


@functools.cache
def _reference_model(name: str) -> UNetModel:
    """The case's model with its recipe weights (cached: tests that change it work on a copy)."""
    case = _case(name)
    return load_recipe(build_config(case["config"]).eval(), case)


def _run(model: UNetModel, inputs: dict, **overrides) -> torch.Tensor:
    args = {"context": inputs["context"], "y": inputs.get("y"), **overrides}
    with torch.no_grad():
        return model(inputs["x"], inputs["timesteps"], **args)


@functools.cache
def _reference_output(name: str) -> torch.Tensor:
    """Our output on the case's inputs (cached; compared with the original's in the first test)."""
    return _run(_reference_model(name), _case(name)["inputs"])


@pytest.fixture(scope="module")
def sd2_tiny() -> UNetModel:
    return _reference_model("unet_sd2_tiny")


# --------------------------------------------------------------------------------------------------------
# The original's numbers and keys
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_tiny_unet_matches_the_original(name: str) -> None:
    case = _case(name)
    model = _reference_model(name)
    assert sorted(model.state_dict()) == sorted(case["state_dict_keys"])
    assert sum(p.numel() for p in model.parameters()) == case["n_params"]
    torch.testing.assert_close(_reference_output(name), case["outputs"]["eps"], **TOL)


def test_context_as_a_one_entry_list_is_the_tensor(sd2_tiny: UNetModel) -> None:
    inputs = _case("unet_sd2_tiny")["inputs"]
    assert torch.equal(_run(sd2_tiny, inputs, context=[inputs["context"]]), _reference_output("unet_sd2_tiny"))


MANIFESTS = {  # configs/stable-diffusion/<config>.yaml -> refdata/sd2/manifests/<tsv>
    "v2-inference": "sd-v2-inference",
    "v2-inference-v": "sd-v2-inference-v",
    "v2-inpainting-inference": "sd-v2-inpainting-inference",
    "v2-midas-inference": "sd-v2-midas-inference",
    "x4-upscaling": "sd-x4-upscaling",
    "v2-1-stable-unclip-h-inference": "sd-v2-1-stable-unclip-h-inference",
    "v2-1-stable-unclip-l-inference": "sd-v2-1-stable-unclip-l-inference",
}


@pytest.mark.parametrize("config", list(MANIFESTS))
def test_full_size_unet_keys_shapes_dtypes(config: str) -> None:
    prefix = "model.diffusion_model."
    rows = load_manifest(f"../sd2/manifests/{MANIFESTS[config]}.tsv")
    expected = {key.removeprefix(prefix): row for key, row in rows.items() if key.startswith(prefix)}
    unet_config = OmegaConf.load(REFDATA.parent.parent / "configs" / "stable-diffusion" / f"{config}.yaml")
    with torch.device("meta"):
        unet = instantiate_from_config(unet_config.model.params.unet_config)
    assert state_dict_manifest(unet) == expected


def test_full_size_v2_attention_layout() -> None:
    """v2-inference.yaml: 64-channel heads (5, 10, 20 heads), linear projections, 16 transformers."""
    config = OmegaConf.load(REFDATA.parent.parent / "configs" / "stable-diffusion" / "v2-inference.yaml")
    with torch.device("meta"):
        unet = instantiate_from_config(config.model.params.unet_config)
    transformers = [m for m in unet.modules() if isinstance(m, SpatialTransformer)]
    assert len(transformers) == 16 and all(isinstance(t.proj_in, torch.nn.Linear) for t in transformers)
    heads = {(b.attn1.heads, b.attn1.to_q.out_features) for t in transformers for b in t.transformer_blocks}
    assert heads == {(5, 320), (10, 640), (20, 1280)}


# --------------------------------------------------------------------------------------------------------
# Options, one by one
# --------------------------------------------------------------------------------------------------------


def test_disabled_self_attention_attends_to_the_context() -> None:
    torch.manual_seed(0)
    block = BasicTransformerBlock(16, 2, 8, context_dim=12, disable_self_attn=True).eval()
    assert block.attn1.to_k.in_features == block.attn1.to_v.in_features == 12
    x, context = torch.randn(2, 9, 16), torch.randn(2, 5, 12)
    calls = []
    block.attn1.register_forward_hook(lambda _m, args, kwargs, _o: calls.append(kwargs["context"]), with_kwargs=True)
    with torch.no_grad():
        block(x, context)
    assert calls[0] is context
    plain = BasicTransformerBlock(16, 2, 8, context_dim=12).eval()
    assert plain.attn1.to_k.in_features == 16


def test_attention_placement_of_disable_sa_case() -> None:
    """num_attention_blocks [1, 2, 0]: level 0 attends in its first encoder and decoder stage only, level 2 never;
    disable_self_attentions [True, False, True] and disable_middle_self_attn True."""
    model = build_config("unet_sd2_disable_sa.yaml")

    def attention(block) -> SpatialTransformer | None:
        return next((m for m in block if isinstance(m, SpatialTransformer)), None)

    encoder = [attention(b) is not None for b in model.input_blocks]
    decoder = [attention(b) is not None for b in model.output_blocks]
    assert encoder == [False, True, False, False, True, True, False, False, False]
    assert decoder == [False, False, False, True, True, False, True, False, False]
    no_self = [attention(b).transformer_blocks[0].disable_self_attn for b in model.input_blocks if attention(b)]
    assert no_self == [True, False, False]
    assert attention(model.middle_block).transformer_blocks[0].disable_self_attn


def test_transformer_depth_above_one_stacks_blocks_on_the_same_context() -> None:
    """The original raises IndexError here. A deeper model whose extra blocks are zeroed in their residual branches
    is the depth-1 model exactly; with the recipe weights the extra blocks change the output."""
    depth, case = 2, _case("unet_sd2_tiny")
    shallow = _reference_model("unet_sd2_tiny")
    deep = UNetModel(**{**_params("unet_sd2_tiny"), "transformer_depth": depth}).eval()
    transformers = [m for m in deep.modules() if isinstance(m, SpatialTransformer)]
    assert transformers and all(len(t.transformer_blocks) == depth for t in transformers)
    deep.load_state_dict(shallow.state_dict(), strict=False)
    seen = []
    for t in transformers:
        for block in list(t.transformer_blocks)[1:]:
            block.attn2.register_forward_hook(lambda _m, _a, kwargs, _o: seen.append(kwargs["context"]),
                                              with_kwargs=True)
            with torch.no_grad():
                for layer in (block.attn1.to_out[0], block.attn2.to_out[0], block.ff.net[2]):
                    layer.weight.zero_()
                    layer.bias.zero_()
    inputs = case["inputs"]
    assert torch.equal(_run(deep, inputs), _reference_output("unet_sd2_tiny"))
    assert len(seen) == len(transformers) and all(c is inputs["context"] for c in seen)
    extra = {k: v for k, v in deep.state_dict().items() if ".transformer_blocks.1." in k}
    deep.load_state_dict(recipe_state_dict({k: v.shape for k, v in extra.items()}, 7), strict=False)
    out = _run(deep, inputs)
    assert out.isfinite().all() and (out - case["outputs"]["eps"]).abs().max() > 1e-2


def test_per_block_context_lists() -> None:
    """A list context_dim gives block i keys of width context_dim[i]; a list context feeds block i entry i."""
    torch.manual_seed(0)
    st = SpatialTransformer(32, 2, 16, depth=2, context_dim=[12, 20], use_linear=True).eval()
    assert [b.attn2.to_k.in_features for b in st.transformer_blocks] == [12, 20]
    x, c1, c2 = torch.randn(1, 32, 3, 3), torch.randn(1, 4, 12), torch.randn(1, 6, 20)
    torch.nn.init.normal_(st.proj_out.weight)
    with torch.no_grad():
        tokens = st.proj_in(st.norm(x).flatten(2).transpose(1, 2))
        tokens = st.transformer_blocks[1](st.transformer_blocks[0](tokens, c1), c2)
        expected = x + st.proj_out(tokens).transpose(1, 2).reshape(x.shape)
        torch.testing.assert_close(st(x, [c1, c2]), expected)
    with pytest.raises(SettingError, match="context lists 3 entries for 2 transformer blocks"):
        st(x, [c1, c2, c2])
    with pytest.raises(SettingError, match="context_dim lists 3 entries"):
        SpatialTransformer(32, 2, 16, depth=2, context_dim=[12, 20, 4])


def test_linear_projections_are_the_conv_projections_as_matrices() -> None:
    torch.manual_seed(0)
    conv = SpatialTransformer(64, 4, 16, context_dim=8, use_linear=False).eval()
    linear = SpatialTransformer(64, 4, 16, context_dim=8, use_linear=True).eval()
    assert linear.proj_in.weight.shape == (64, 64) and linear.proj_out.weight.shape == (64, 64)
    assert not linear.proj_out.weight.any() and not linear.proj_out.bias.any()
    torch.nn.init.normal_(conv.proj_out.weight)
    state = {k: v.flatten(1) if k.startswith("proj_") and v.ndim == 4 else v for k, v in conv.state_dict().items()}
    linear.load_state_dict(state, strict=True)
    x, context = torch.randn(2, 64, 4, 5), torch.randn(2, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, context), conv(x, context), rtol=1e-5, atol=1e-5)


def test_signatures_as_the_original() -> None:
    def defaults(cls) -> list[tuple[str, object]]:
        return [(p.name, p.default) for p in list(inspect.signature(cls).parameters.values())]

    empty = inspect.Parameter.empty
    assert defaults(SpatialTransformer) == [
        ("in_channels", empty), ("n_heads", empty), ("d_head", empty), ("depth", 1), ("dropout", 0.0),
        ("context_dim", None), ("disable_self_attn", False), ("use_linear", False), ("use_checkpoint", True),
    ]
    assert defaults(BasicTransformerBlock) == [
        ("dim", empty), ("n_heads", empty), ("d_head", empty), ("dropout", 0.0), ("context_dim", None),
        ("gated_ff", True), ("checkpoint", True), ("disable_self_attn", False),
    ]
    unet = dict(defaults(UNetModel))
    assert {k: unet[k] for k in ("use_bf16", "disable_self_attentions", "num_attention_blocks",
                                 "disable_middle_self_attn", "use_linear_in_transformer", "adm_in_channels")} == {
        "use_bf16": False, "disable_self_attentions": None, "num_attention_blocks": None,
        "disable_middle_self_attn": False, "use_linear_in_transformer": False, "adm_in_channels": None,
    }


def test_label_embeddings_add_to_the_time_embedding() -> None:
    """Each kind of num_classes: emb = time_embed(t) + label_emb(y), seen at the first ResBlock's emb input."""
    base = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                attention_resolutions=[], channel_mult=[1], num_heads=2)
    ys = {1000: torch.tensor([20, 350]), "continuous": torch.rand(2, 1), "sequential": torch.randn(2, 24)}
    for num_classes, y in ys.items():
        torch.manual_seed(0)
        model = UNetModel(**base, num_classes=num_classes, adm_in_channels=24).eval()
        seen = []
        model.input_blocks[1][0].register_forward_hook(lambda _m, args, _o, seen=seen: seen.append(args[1]))
        t = torch.tensor([3, 951])
        with torch.no_grad():
            model(torch.randn(2, 4, 8, 8), t, y=y)
            expected = model.time_embed(timestep_embedding(t, 32)) + model.label_emb(y)
        torch.testing.assert_close(seen[0], expected)
    keys = set(UNetModel(**base, num_classes="sequential", adm_in_channels=24).state_dict())
    assert {k for k in keys if k.startswith("label_emb")} == {
        "label_emb.0.0.weight", "label_emb.0.0.bias", "label_emb.0.2.weight", "label_emb.0.2.bias"
    }


def test_per_level_num_res_blocks() -> None:
    torch.manual_seed(0)
    model = UNetModel(image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 2],
                      attention_resolutions=[2], channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True,
                      context_dim=8, num_attention_blocks=[1, 1]).eval()
    assert model.num_res_blocks == [1, 2]
    assert len(model.input_blocks) == 1 + 1 + 1 + 2 and len(model.output_blocks) == 3 + 2
    attends = [any(isinstance(m, SpatialTransformer) for m in b) for b in model.output_blocks]
    assert attends == [True, False, False, False, False]
    with torch.no_grad():
        out = model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), context=torch.randn(2, 3, 8))
    assert out.shape == (2, 4, 8, 8)


# --------------------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["use_fp16", "use_bf16"])
def test_half_flags_keep_a_float32_cpu_forward(sd2_tiny: UNetModel, flag: str) -> None:
    """The original raises (h cast to half, weights float32); here the CPU forward is the float32 one, bit for bit,
    and the weights keep the checkpoints' dtype."""
    model = UNetModel(**{**_params("unet_sd2_tiny"), flag: True}).eval()
    model.load_state_dict(sd2_tiny.state_dict(), strict=True)
    assert model.dtype == (torch.float16 if flag == "use_fp16" else torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    inputs = _case("unet_sd2_tiny")["inputs"]
    out = _run(model, inputs)
    assert out.dtype == torch.float32 and torch.equal(out, _reference_output("unet_sd2_tiny"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_use_fp16_runs_the_torso_in_half_on_cuda(sd2_tiny: UNetModel) -> None:
    model = UNetModel(**{**_params("unet_sd2_tiny"), "use_fp16": True}).eval()
    model.load_state_dict(sd2_tiny.state_dict(), strict=True)
    model.cuda()
    dtypes = []
    model.input_blocks[1][0].in_layers[2].register_forward_hook(lambda _m, _a, out: dtypes.append(out.dtype))
    case = _case("unet_sd2_tiny")
    inputs = {k: v.cuda() for k, v in case["inputs"].items()}
    out = _run(model, inputs)
    assert dtypes == [torch.float16] and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), case["outputs"]["eps"], rtol=0, atol=2e-2)


# --------------------------------------------------------------------------------------------------------
# Fast paths on a linear-projection UNet
# --------------------------------------------------------------------------------------------------------


def test_fast_paths_keep_the_sd2_numbers(sd2_tiny: UNetModel) -> None:
    case = _case("unet_sd2_tiny")
    model = copy.deepcopy(sd2_tiny)
    assert swap_fast_blocks(model) == 16
    assert set_attention_slicing(model, 5) == sum(isinstance(m, CrossAttention) for m in model.modules())
    if onednn_packing_available():
        model.to(memory_format=torch.channels_last)
        assert pack_convolutions(model, skip=(SpatialTransformer,)) > 0
    torch.testing.assert_close(_run(model, case["inputs"]), case["outputs"]["eps"], **TOL)


# --------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------

_SMALL = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2,
              attention_resolutions=[1], channel_mult=[1, 2], num_heads=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": "sequential"}, "needs adm_in_channels"),
        ({"num_classes": "ordinal"}, "neither a class count"),
        ({"num_attention_blocks": [3, 1]}, r"num_attention_blocks\[0\] = 3 exceeds"),
        ({"num_attention_blocks": [1]}, "num_attention_blocks has 1 entries but channel_mult has 2"),
        ({"disable_self_attentions": [True, False, True]}, "disable_self_attentions has 3 entries"),
        ({"num_res_blocks": [1, 2, 3]}, "num_res_blocks has 3 entries"),
    ],
)
def test_setting_errors_name_the_setting(kwargs: dict, message: str) -> None:
    with pytest.raises(SettingError, match=message):
        UNetModel(**{**_SMALL, **kwargs})


@pytest.mark.parametrize(
    ("num_classes", "y", "expected"),
    [(10, torch.zeros(2, 1, dtype=torch.long), r"\(2,\)"), ("continuous", torch.zeros(2), r"\(2, 1\)"),
     ("sequential", torch.zeros(2, 5), r"\(2, 24\)")],
)
def test_label_shape_errors(num_classes, y: torch.Tensor, expected: str) -> None:
    model = UNetModel(**{**_SMALL, "num_classes": num_classes, "adm_in_channels": 24})
    with pytest.raises(SettingError, match=f"y must have shape {expected}"):
        model(torch.zeros(2, 4, 8, 8), torch.tensor([1, 2]), y=y)
