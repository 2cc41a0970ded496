"""OpenCLIP / CLIP-image conditioners of SD 2.x against the original's numbers, closed forms and the manifests.

Pinned numbers were produced by the ORIGINAL Stability-AI/stablediffusion classes (cf1d67a6) running on
open_clip_torch 2.7.0 (sequence-first), kornia 0.6.9 and openai-clip 1.0.1, with the weight recipe of
``refdata/sd2/README.md`` (base seeds below) and the inputs built here.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from ldm.modules.encoders import modules
from ldm.modules.encoders.clip_image import (
    ClipImageEmbedder,
    drop_whole_embeddings,
    read_openai_state_dict,
    resize_bicubic,
)
from ldm.modules.encoders.clip_tokenizer import offline_clip_tokenizer
from ldm.modules.encoders.openclip_embedders import (
    FrozenOpenCLIPEmbedder,
    FrozenOpenCLIPImageEmbedder,
    local_weights,
)
from ldm.util import instantiate_from_config
from tests.helpers import REFDATA

SD2 = REFDATA / "sd2"
TINY_TEXT = "sd2ref-tiny-text"
SOT, EOT = 49406, 49407
LONG = " ".join(f"word{i}" for i in range(60))  # 170 BPE tokens: truncated
PROMPTS = ["a photo of a cat", "", "An astronaut riding a horse", LONG]
TINY_VISION = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 1},
}


def recipe(shapes: dict[str, tuple[int, ...]], base_seed: int) -> dict[str, torch.Tensor]:
    """The README's weight recipe over the sorted keys."""
    values = {}
    for i, key in enumerate(sorted(shapes)):
        g = torch.Generator().manual_seed(base_seed + i)
        shape = shapes[key]
        if len(shape) >= 2:
            values[key] = torch.randn(shape, generator=g) * float(1 / math.sqrt(math.prod(shape[1:])))
        else:
            values[key] = (1.0 if key.endswith(".weight") else 0.0) + 0.1 * torch.randn(shape, generator=g)
    return values


def set_recipe(module: torch.nn.Module, base_seed: int) -> None:
    values = recipe({k: tuple(p.shape) for k, p in module.named_parameters()}, base_seed)
    with torch.no_grad():
        for key, param in module.named_parameters():
            param.copy_(values[key])


def sd2_manifest(name: str, prefix: str) -> dict[str, tuple[tuple[int, ...], str]]:
    rows = {}
    for line in (SD2 / "manifests" / name).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        if key.startswith(prefix):
            rows[key[len(prefix) :]] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return rows


def manifest_of(module: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()}


@pytest.fixture(scope="module", autouse=True)
def tiny_text_registered() -> None:
    open_clip.add_model_config(str(SD2 / "configs" / f"{TINY_TEXT}.json"))


@pytest.fixture(scope="module")
def text_encoders() -> dict[str, FrozenOpenCLIPEmbedder]:
    encoders = {}
    for layer in FrozenOpenCLIPEmbedder.LAYERS:
        encoders[layer] = FrozenOpenCLIPEmbedder(TINY_TEXT, None, layer=layer)
        set_recipe(encoders[layer], 60000)
    return encoders


@pytest.fixture(scope="module")
def tiny_vision_json(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("oc") / "sd2test-tiny-vision224.json"
    path.write_text(json.dumps(TINY_VISION))
    return str(path)


@pytest.fixture(scope="module")
def image_encoder(tiny_vision_json: str) -> FrozenOpenCLIPImageEmbedder:
    encoder = FrozenOpenCLIPImageEmbedder(tiny_vision_json, None)
    set_recipe(encoder, 61000)
    return encoder


# --------------------------------------------------------------------------------------------------------------------
# Token ids
# --------------------------------------------------------------------------------------------------------------------


def test_token_ids_are_clip_bpe_padded_with_zero(text_encoders: dict[str, FrozenOpenCLIPEmbedder]) -> None:
    ids = text_encoders["last"].tokenize(PROMPTS)
    assert ids.shape == (4, 77) and ids.dtype == torch.int64
    assert ids[0, :8].tolist() == [SOT, 320, 1125, 539, 320, 2368, EOT, 0]  # "a photo of a cat"
    assert ids[0, 7:].eq(0).all()
    assert ids[1].tolist() == [SOT, EOT] + [0] * 75
    assert torch.equal(ids, open_clip.tokenize(PROMPTS))


def test_long_prompt_truncated_to_77_keeping_end_token(text_encoders: dict[str, FrozenOpenCLIPEmbedder]) -> None:
    ids = text_encoders["last"].tokenize(LONG)[0]
    bpe = offline_clip_tokenizer()(LONG, add_special_tokens=False)["input_ids"]  # an independent BPE implementation
    assert len(bpe) == 170
    assert ids.tolist() == [SOT, *bpe[:75], EOT]
    fits = " ".join(["cat"] * 75)  # 75 tokens + start + end = 77: kept whole
    assert text_encoders["last"].tokenize(fits)[0].tolist() == [SOT] + [2368] * 75 + [EOT]


def test_text_is_cleaned_before_tokenizing(text_encoders: dict[str, FrozenOpenCLIPEmbedder]) -> None:
    tokenize = text_encoders["last"].tokenize
    assert torch.equal(tokenize("  A   PHOTO of a\ncat  "), tokenize("a photo of a cat"))


# --------------------------------------------------------------------------------------------------------------------
# Text features
# --------------------------------------------------------------------------------------------------------------------

ORIGINAL_SUMS = {
    "last": [-134.43451522235046, -130.08633879970876, -125.03362553290208, -84.89537372792256],
    "penultimate": [-119.16970005750773, -113.36219749923566, -119.95517475842371, -33.20382417712244],
}
ORIGINAL_FIRST_WORD = {  # z[:, 1, :4]
    "last": [
        [-0.1546667516231537, 0.4738946557044983, 0.23471270501613617, 0.025885818526148796],
        [-0.3089620769023895, 0.5281165242195129, -0.06703218817710876, -0.8930044770240784],
        [-0.3089114725589752, 0.15191230177879333, -0.17578837275505066, -0.4305082857608795],
        [-1.0585051774978638, 0.5981935262680054, -0.695212721824646, -0.35431960225105286],
    ],
    "penultimate": [
        [-0.16320598125457764, 1.0741124153137207, -0.0732138603925705, -0.13198749721050262],
        [-0.40772512555122375, 1.236108422279358, -0.6184465885162354, -1.097177505493164],
        [-0.27113133668899536, 1.0803776979446411, -0.6726085543632507, -0.5400920510292053],
        [-1.4020951986312866, 0.907333493232727, -0.937889575958252, -0.10738669335842133],
    ],
}


@pytest.mark.parametrize("layer", FrozenOpenCLIPEmbedder.LAYERS)
def test_text_features_equal_the_original(text_encoders: dict[str, FrozenOpenCLIPEmbedder], layer: str) -> None:
    with torch.no_grad():
        z = text_encoders[layer](PROMPTS)
    assert z.shape == (4, 77, 64)
    torch.testing.assert_close(z.double().sum(dim=(1, 2)), torch.tensor(ORIGINAL_SUMS[layer]).double(), rtol=1e-5,
                               atol=1e-3)
    torch.testing.assert_close(z[:, 1, :4], torch.tensor(ORIGINAL_FIRST_WORD[layer]), rtol=1e-5, atol=1e-5)


def _block_by_hand(block: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Pre-LN residual block ``h + MHA(LN₁ h)`` (causal), then ``+ W₂ GELU(W₁ LN₂ h)``, from its weights only."""
    width = h.shape[-1]
    heads = block.attn.num_heads
    a = F.layer_norm(h, (width,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    q, k, v = (a @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.unflatten(-1, (heads, width // heads)).transpose(1, 2) for t in (q, k, v))  # (B, heads, L, d)
    scores = q @ k.transpose(-1, -2) / math.sqrt(width // heads)
    future = torch.ones(h.shape[1], h.shape[1], dtype=torch.bool).triu(1)
    mixed = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
    h = h + mixed.transpose(1, 2).flatten(2) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    m = F.layer_norm(h, (width,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    m = F.gelu(m @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias)
    return h + m @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias


@pytest.mark.parametrize("layer", FrozenOpenCLIPEmbedder.LAYERS)
def test_layer_is_ln_final_after_the_chosen_block(text_encoders: dict[str, FrozenOpenCLIPEmbedder], layer: str) -> None:
    encoder = text_encoders[layer]
    clip = encoder.model
    ids = open_clip.tokenize(PROMPTS[:3])
    blocks = list(clip.transformer.resblocks)
    used = blocks if layer == "last" else blocks[:-1]
    with torch.no_grad():
        h = clip.token_embedding.weight[ids] + clip.positional_embedding
        for block in used:
            h = _block_by_hand(block, h)
        expected = F.layer_norm(h, (64,), clip.ln_final.weight, clip.ln_final.bias, clip.ln_final.eps)
        torch.testing.assert_close(encoder(PROMPTS[:3]), expected, rtol=1e-5, atol=1e-5)


def test_last_and_penultimate_differ(text_encoders: dict[str, FrozenOpenCLIPEmbedder]) -> None:
    with torch.no_grad():
        gap = (text_encoders["last"](PROMPTS) - text_encoders["penultimate"](PROMPTS)).abs().mean()
    assert gap > 0.1


def test_batch_equals_each_sample_alone(text_encoders: dict[str, FrozenOpenCLIPEmbedder]) -> None:
    encoder = text_encoders["penultimate"]
    with torch.no_grad():
        batch = encoder(PROMPTS)
        alone = torch.cat([encoder([p]) for p in PROMPTS])
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-5)


def test_positions_see_only_earlier_tokens(text_encoders: dict[str, FrozenOpenCLIPEmbedder]) -> None:
    with torch.no_grad():
        a, b = text_encoders["penultimate"](["a photo of a cat", "a photo of a dog"])
    torch.testing.assert_close(a[:5], b[:5], rtol=0, atol=1e-6)  # start, a, photo, of, a: identical
    assert (a[5] - b[5]).abs().max() > 1e-3


def test_device_is_assignable_and_tokens_follow_the_weights() -> None:
    encoder = FrozenOpenCLIPEmbedder(TINY_TEXT, None, layer="penultimate")  # device defaults to "cuda"
    assert encoder.device == "cuda"
    with torch.no_grad():
        assert encoder("works on cpu").shape == (1, 77, 64)
    encoder.device = "cpu"
    assert encoder.device == "cpu"


def test_freeze_and_unknown_layer() -> None:
    encoder = FrozenOpenCLIPEmbedder(TINY_TEXT, None)
    assert not encoder.model.training and not any(p.requires_grad for p in encoder.parameters())
    assert all(p.requires_grad for p in FrozenOpenCLIPEmbedder(TINY_TEXT, None, freeze=False).parameters())
    with pytest.raises(ValueError, match="layer='pooled'"):
        FrozenOpenCLIPEmbedder(TINY_TEXT, None, layer="pooled")
    with pytest.raises(ValueError, match="add_model_config"):
        FrozenOpenCLIPEmbedder("no-such-arch", None)


def test_the_v_reference_config_cond_stage_builds() -> None:
    """refdata/sd2 ``ldm_v_tiny.yaml``: its cond stage has exactly the reference's cond_stage_model parameters."""
    config = OmegaConf.load(SD2 / "configs" / "ldm_v_tiny.yaml").model.params.cond_stage_config
    stage = instantiate_from_config(config)
    reference = torch.load(SD2 / "vectors" / "v.pt", weights_only=True)
    expected = {
        k.removeprefix("cond_stage_model."): list(s)
        for k, s in reference["param_shapes"].items()
        if k.startswith("cond_stage_model.")
    }
    assert {k: list(p.shape) for k, p in stage.named_parameters()} == expected
    with torch.no_grad():
        assert stage.encode(["a", "b"]).shape == reference["inputs"]["c"].shape


# --------------------------------------------------------------------------------------------------------------------
# Weights: manifests and offline resolution
# --------------------------------------------------------------------------------------------------------------------


def test_full_size_state_dicts_match_the_manifests() -> None:
    with torch.device("meta"):
        text = FrozenOpenCLIPEmbedder(device="cpu", layer="penultimate")
        image_h = FrozenOpenCLIPImageEmbedder()
        image_l = ClipImageEmbedder("ViT-L/14")
    assert manifest_of(text) == sd2_manifest("sd-v2-inference.tsv", "cond_stage_model.")
    assert manifest_of(text) == sd2_manifest("sd-v2-inference-v.tsv", "cond_stage_model.")
    assert manifest_of(image_h) == sd2_manifest("sd-v2-1-stable-unclip-h-inference.tsv", "embedder.")
    assert manifest_of(image_l) == sd2_manifest("sd-v2-1-stable-unclip-l-inference.tsv", "embedder.")
    assert modules.FrozenOpenCLIPEmbedder is FrozenOpenCLIPEmbedder
    assert modules.FrozenOpenCLIPImageEmbedder is FrozenOpenCLIPImageEmbedder
    assert modules.ClipImageEmbedder is ClipImageEmbedder


def test_pretrained_tag_resolves_only_from_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert local_weights("ViT-H-14", None) is None
    with caplog.at_level("WARNING"):
        assert local_weights("ViT-H-14", "laion2b_s32b_b79k") is None
    assert "RANDOM" in caplog.text
    repo = tmp_path / "models--laion--CLIP-ViT-H-14-laion2B-s32B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    weights = repo / "snapshots" / "abc123" / "open_clip_pytorch_model.bin"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert local_weights("ViT-H-14", "laion2b_s32b_b79k") == str(weights)
    with pytest.raises(ValueError, match="laion2b_s32b_b79k"):
        local_weights("ViT-H-14", "no_such_tag")


def test_version_may_be_a_local_checkpoint(tmp_path: Path) -> None:
    full = open_clip.create_model(TINY_TEXT, pretrained=None)
    set_recipe(full, 123)
    path = tmp_path / "tiny.pt"
    torch.save(full.state_dict(), path)
    encoder = FrozenOpenCLIPEmbedder(TINY_TEXT, str(path))
    for key, value in encoder.model.state_dict().items():
        torch.testing.assert_close(value, full.state_dict()[key], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------------
# Image embedders
# --------------------------------------------------------------------------------------------------------------------

ORIGINAL_IMAGE = [  # FrozenOpenCLIPImageEmbedder(x)[:, :6]
    [0.0757407546043396, -0.5701119303703308, 0.00030675530433654785, -0.4783838391304016, 3.197728157043457,
     1.2310163974761963],
    [0.48422378301620483, -0.5485292673110962, -0.388860285282135, -0.5787944793701172, 3.9116427898406982,
     1.23606538772583],
]
ORIGINAL_IMAGE_768 = [0.6225188970565796, -0.5436011552810669, -0.06666302680969238, -0.43242013454437256,
                      3.867415428161621, 0.9058268070220947]
ORIGINAL_PRE_768 = (28363.665873825168, [0.2823677957057953, 0.48491740226745605, 0.929121732711792])


def test_openclip_image_embedding_equals_the_original(image_encoder: FrozenOpenCLIPImageEmbedder) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 256, 256, generator=g) * 2 - 1
    tall = torch.rand(1, 3, 768, 512, generator=g) * 2 - 1
    with torch.no_grad():
        z = image_encoder(x)
        z_tall = image_encoder(tall)
        pre = image_encoder.preprocess(tall)
    assert z.shape == (2, 32) and pre.shape == (1, 3, 224, 224)
    torch.testing.assert_close(z[:, :6], torch.tensor(ORIGINAL_IMAGE), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z_tall[0, :6], torch.tensor(ORIGINAL_IMAGE_768), rtol=1e-4, atol=1e-5)
    assert pre.double().sum().item() == pytest.approx(ORIGINAL_PRE_768[0], rel=1e-6)
    torch.testing.assert_close(pre[0, :, 100, 100], torch.tensor(ORIGINAL_PRE_768[1]), rtol=1e-5, atol=1e-6)


def test_image_guidance_dropout(image_encoder: FrozenOpenCLIPImageEmbedder) -> None:
    x = torch.rand(8, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        kept = image_encoder(x)
        image_encoder.ucg_rate = 0.5
        try:
            torch.manual_seed(7)
            x7 = torch.rand(8, 3, 224, 224) * 2 - 1
            dropped = image_encoder(x7)
            unchanged = image_encoder(x, no_dropout=True)
        finally:
            image_encoder.ucg_rate = 0.0
        reference = image_encoder(x7)
    assert (kept.abs().sum(1) > 0).all()
    torch.testing.assert_close(unchanged, kept)
    zero_rows = dropped.abs().sum(1) == 0
    assert zero_rows.tolist() == [False, True, False, True, False, False, False, True]  # the original's draw
    torch.testing.assert_close(dropped[~zero_rows], reference[~zero_rows])


def test_drop_whole_embeddings_rate() -> None:
    torch.manual_seed(0)
    z = drop_whole_embeddings(torch.ones(4000, 3), 0.3)
    assert torch.equal(z[:, 0], z[:, 1]) and set(z.unique().tolist()) <= {0.0, 1.0}
    assert z[:, 0].mean().item() == pytest.approx(0.7, abs=0.03)  # 4.5 binomial standard deviations


def test_resize_closed_forms() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 300, 260, generator=g)
    plain = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True)
    torch.testing.assert_close(resize_bicubic(x, (224, 224), antialias=False), plain)
    same = torch.rand(1, 3, 224, 224, generator=g)
    assert resize_bicubic(same, (224, 224)) is same
    flat = torch.full((1, 3, 500, 380), 0.25)
    torch.testing.assert_close(resize_bicubic(flat, (224, 224)), torch.full((1, 3, 224, 224), 0.25))
    up = torch.rand(1, 3, 100, 120, generator=g)  # enlarging: no blur
    torch.testing.assert_close(resize_bicubic(up, (224, 224)), F.interpolate(up, (224, 224), mode="bicubic",
                                                                             align_corners=True))


ORIGINAL_OPENAI = [  # ClipImageEmbedder(x)[:, :6] on the openai-clip package
    [-1.6155474185943604, 3.7143678665161133, 0.7160672545433044, 3.3333044052124023, -1.2339767217636108,
     0.6532358527183533],
    [-2.1246261596679688, 3.29866361618042, 0.5477033257484436, 3.7539165019989014, -0.39139941334724426,
     0.03899809718132019],
    [-1.955100417137146, 3.797255516052246, 0.6601828932762146, 3.871274471282959, -0.4272143244743347,
     -0.5003975033760071],
]


def _tiny_openai_clip() -> CLIP:
    vision = CLIPVisionCfg(layers=2, width=64, patch_size=32, image_size=224)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)
    return CLIP(32, vision, text, quick_gelu=True)


def test_clip_image_embedder_from_an_openai_state_dict(tmp_path: Path) -> None:
    weights = recipe({k: tuple(v.shape) for k, v in _tiny_openai_clip().state_dict().items()}, 62000)
    path = tmp_path / "tiny-openai.pt"
    torch.save(weights, path)
    embedder = ClipImageEmbedder(str(path), device="cpu")
    assert set(embedder.state_dict()) == {f"model.{k}" for k in weights}
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, 300, 260, generator=g) * 2 - 1
    with torch.no_grad():
        z = embedder(x)
        embedder.ucg_rate = 1.0
        assert embedder(x).eq(0).all()
        assert torch.equal(embedder(x, no_dropout=True), z)
    assert z.shape == (3, 32) and z.dtype == x.dtype
    torch.testing.assert_close(z[:, :6], torch.tensor(ORIGINAL_OPENAI), rtol=1e-4, atol=1e-5)


def test_openai_torchscript_archive_is_read(tmp_path: Path) -> None:
    model = _tiny_openai_clip().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(model, {"encode_image": torch.zeros(1, 3, 224, 224)})
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    state = read_openai_state_dict(path)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)
    with pytest.raises(ValueError, match="OpenAI CLIP state dict"):
        torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
        read_openai_state_dict(tmp_path / "other.pt")


def test_the_openclip_conditioners_are_abstract_encoders_as_in_the_original():
    from ldm.modules.encoders.modules import AbstractEncoder, ClipImageEmbedder
    from ldm.modules.encoders.modules import FrozenOpenCLIPEmbedder as TextEmbedder
    from ldm.modules.encoders.modules import FrozenOpenCLIPImageEmbedder as ImageEmbedder

    assert issubclass(TextEmbedder, AbstractEncoder) and issubclass(ImageEmbedder, AbstractEncoder)
    assert not issubclass(ClipImageEmbedder, AbstractEncoder)
